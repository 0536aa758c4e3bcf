"""Generation at the CPU frontier: every backend x precision on one merged SmolLM2-135M E2E LoRA, as tokens/s
against E2E BLEU. Not a test: prints tables, writes JSON + PNG.

    python -m benchmarks.generation_frontier build        # train (issue-10 LoRA recipe), export, test prompts
    python -m benchmarks.generation_frontier.variants build|quality    # our quantised variants: greedy outputs
    python -m benchmarks.generation_frontier.peers decode              # PyTorch, onnxruntime-genai, llama.cpp
    python -m benchmarks.generation_frontier speed        # ours, each measurement in its own process
    python -m benchmarks.generation_frontier.peers speed
    python -m benchmarks.generation_frontier report       # tables, results/frontier.json + .png, the docs page

Run `speed` (ours and the peers') on an otherwise idle machine: every other job stopped. Protocol (`data`):
- Quality: greedy decoding of the 200 test MRs (at most 64 new tokens, stop at eos), every backend fed the
  same token ids; corpus BLEU against all references (sacrebleu); the difference to our fp32 with a paired
  bootstrap 95 % interval over the MRs.
- Batch 1 (``bare``): SPEED_PROMPTS test prompts, each decoding exactly SPEED_TOKENS tokens (eos ignored), after
  one warm-up; tokens/s = tokens / decode time, median over REPEATS rounds; first-token time = the prefill
  (median); peak RSS of the process. Our loop twice: through the shared-buffer cache (the server's) and the
  padded numpy cache (the plain loop), so the cache's own gain is a ratio from one run.
- Concurrency (``engine``, ``served``): CONCURRENT_PROMPTS test prompts, at most 64 new tokens each (eos ends
  a request, as in serving), sent by N closed-loop clients (N = 1, 4, 8, 16): tokens/s = completion tokens /
  wall time. ``engine`` drives the `GenerationEngine` in process; ``served`` is `adamix-serve` over HTTP, so
  served / engine is the cost of the server.
- Bandwidth: a numpy copy of a 1 GB array, best of 5; its traffic (read + write, as STREAM counts a copy) over
  time is the bandwidth. A file's bytes per token are its weights read per decoded token (an initializer read
  only by a Gather counts one row), so its ceiling is bandwidth / bytes per token.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

from benchmarks.common.subprocesses import ChildFailed, child, command
from benchmarks.common.trials import append_record, read_records
from benchmarks.generation_frontier import data

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ME = "benchmarks.generation_frontier"
SPEED_PROMPTS, SPEED_TOKENS, REPEATS = 4, 32, 3
CONCURRENCY = (1, 4, 8, 16)
CONCURRENT_PROMPTS = 32
LR, SEED, EPOCHS, BATCH, MAX_LENGTH = 2e-3, 0, 1, 8, 128  # the issue-10 LoRA arm (benchmarks.adamix_quality.e2e)


# -- build ---------------------------------------------------------------------------------------------------------
def build(quantize: list[str]) -> None:
    from benchmarks.adamix_quality.e2e import FULL, make_splits, write_pairs

    data.FRONTIER.mkdir(parents=True, exist_ok=True)
    if not (data.CHECKPOINT / "adamix_config.json").exists():
        train_file = data.FRONTIER / "train.csv"
        write_pairs(train_file, make_splits(FULL)["train"])
        command("adamix-train", "--model", "smollm2", "--task", "generation", "--train-file", train_file,
                "--method", "lora", "--recipe", "nlg-lora", "--experts", 1, "--consistency-weight", 0,
                "--epochs", EPOCHS, "--batch-size", BATCH, "--max-length", MAX_LENGTH, "--lr", LR, "--seed", SEED,
                "--threads", data.THREADS, "--quiet", "--output", data.CHECKPOINT, "--overwrite")  # fmt: skip
    if not (data.EXPORT / "adamix_manifest.json").exists():
        flags = [part for precision in quantize for part in ("--quantize", precision)]
        command("adamix-export", "--merge", data.CHECKPOINT, "--output", data.EXPORT, *flags, "--overwrite")
    data.write_test_set()
    print(f"model: {data.EXPORT}; {len(data.prompts())} test prompts")


# -- speed: ours, one measurement per process -----------------------------------------------------------------
def bare_one(path: str, cache: str) -> dict:
    """Batch 1 through `onnx_loops.greedy_generate` (no eos) with one cache kind."""
    from adamix_deploy.serving.engine.kv_cache import open_cache
    from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session

    started = time.perf_counter()
    session = open_session(path, threads=data.THREADS)
    load_s = time.perf_counter() - started
    shared = cache == "shared"
    prompts = data.prompts()[:SPEED_PROMPTS]
    greedy_generate(session, prompts[0], 4, None, shared_buffers=shared)  # warm-up
    rates, firsts = [], []
    for _ in range(REPEATS):
        for ids in prompts:
            prefill = open_cache(session, 1, shared_buffers=shared)
            prefill.reserve(len(ids) + 1)
            t = time.perf_counter()
            prefill.prefill(ids)
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            greedy_generate(session, ids, SPEED_TOKENS, None, shared_buffers=shared)
            rates.append(SPEED_TOKENS / (time.perf_counter() - t))
    return {"tokens_per_s": statistics.median(rates), "rounds": [round(r, 2) for r in rates],
            "first_token_ms": 1000 * statistics.median(firsts), "load_s": round(load_s, 2),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def _closed_loop(concurrency: int, prompts: list, send) -> tuple[int, float]:
    """``concurrency`` clients, each sending the next prompt once its last answer is back: (tokens, seconds)."""
    pending, lock, total = list(prompts), threading.Lock(), [0]

    def client():
        while True:
            with lock:
                if not pending:
                    return
                prompt = pending.pop(0)
            tokens = send(prompt)
            with lock:
                total[0] += tokens

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0], time.perf_counter() - start


def engine_one(path: str, concurrency: int) -> dict:
    """The in-process `GenerationEngine` under ``concurrency`` closed-loop clients."""
    from tokenizers import Tokenizer

    from adamix_deploy.serving.engine.generation import GenerationEngine, GenerationJob
    from adamix_deploy.serving.engine.onnx_loops import open_session
    from adamix_deploy.serving.engine.results import Finished
    from adamix_deploy.serving.engine.sampling import SamplingParams

    session = open_session(path, threads=data.THREADS)
    tokenizer = Tokenizer.from_file(str(data.EXPORT / "tokenizer.json"))
    engine = GenerationEngine(session, tokenizer, data.eos_ids(), max(CONCURRENCY), 1024, "bench")
    engine.start()

    def send(ids) -> int:
        done, result = threading.Event(), []

        def emit(event):
            if isinstance(event, Finished):
                result.append(event.completion_tokens)
                done.set()

        engine.submit(GenerationJob(list(ids), data.MAX_NEW_TOKENS, SamplingParams(), None, [], emit))
        done.wait()
        return result[0]

    prompts = data.prompts()[:CONCURRENT_PROMPTS]
    send(prompts[0])  # warm-up
    tokens, seconds = _closed_loop(concurrency, prompts, send)
    engine.stop()
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": round(seconds, 2),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def served(precision: str, port: int) -> list[dict]:
    """`adamix-serve --precision` under each CONCURRENCY (closed-loop HTTP clients, greedy, ids as text)."""
    import httpx

    from benchmarks.common.servers import adamix_server

    server = adamix_server(data.EXPORT, port, "--precision", precision, "--threads", str(data.THREADS),
                           "--max-generation-batch", str(max(CONCURRENCY)))  # fmt: skip
    url = f"{server.url}/v1/models/{data.EXPORT.name}/generate"
    texts = data.mrs()[:CONCURRENT_PROMPTS]  # the server applies the template: the same ids as data.prompts()
    body = {"max_new_tokens": data.MAX_NEW_TOKENS, "temperature": 0}
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

    def send(text) -> int:
        answer = client.post(url, json={**body, "prompt": text})
        answer.raise_for_status()
        return answer.json()["usage"]["completion_tokens"]

    rows = []
    try:
        send(texts[0])  # warm-up
        for concurrency in CONCURRENCY:
            tokens, seconds = _closed_loop(concurrency, texts, send)
            rows.append({"concurrency": concurrency, "tokens_per_s": tokens / seconds, "tokens": tokens,
                         "seconds": round(seconds, 2), "ready_s": server.ready_s,
                         "peak_rss_mib": server.memory()["VmHWM"]})  # fmt: skip
    finally:
        client.close()
        server.stop()
    return rows


def genai_engine(path: Path, concurrency: int) -> dict | None:
    """`genai_engine_peer.py` on ``path`` (its own process); None when onnxruntime-genai is not installed."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("onnxruntime_genai") is None:
        print("skipped: onnxruntime-genai not installed (pip install -e '.[train]')")
        return None
    peer = Path(__file__).resolve().parent / "genai_engine_peer.py"
    prompts = data.FRONTIER / "concurrent_prompts.json"
    prompts.write_text(json.dumps(data.prompts()[:CONCURRENT_PROMPTS]))
    out = subprocess.run([sys.executable, str(peer), str(data.EXPORT), path.name, str(prompts), "--concurrency",
                          str(concurrency), "--max-new-tokens", str(data.MAX_NEW_TOKENS), "--threads",
                          str(data.THREADS)], capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        print(f"genai engine failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def bandwidth() -> dict:
    """A numpy copy of a 1 GB array, best of 5: its size over its time (the report counts the traffic twice)."""
    import numpy as np

    source = np.ones(1 << 27, dtype=np.float64)  # 1 GiB
    target = np.empty_like(source)
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(5))
    return {"copy_gb_per_s": source.nbytes / best / 1e9, "array_gb": source.nbytes / 1e9}


def _timed(work) -> float:
    t = time.perf_counter()
    work()
    return time.perf_counter() - t


def our_files() -> dict[str, Path]:
    """precision -> file: the export's files, and every variant built by `variants`."""
    from adamix_deploy.contracts.export_folder import read_manifest

    files = {p: data.EXPORT / f for p, f in read_manifest(data.EXPORT).onnx.models.items()}
    variants = data.FRONTIER / "variants"
    for folder in sorted(variants.iterdir()) if variants.is_dir() else []:
        for graph in folder.glob("*.onnx"):
            files[folder.name] = graph
    return files


def speed(only: str | None, results: Path = data.SPEED, bare_only: bool = False) -> None:
    done = {r["key"] for r in read_records(results)}

    def record(key: str, row: dict) -> None:
        append_record(results, {"key": key, **row})
        print(key, {k: v for k, v in row.items() if k != "rounds"}, flush=True)

    if "bandwidth" not in done:
        record("bandwidth", child(ME, "bandwidth-one"))
    for precision, path in our_files().items():
        if only and precision not in only.split(","):
            continue
        # the padded numpy cache (the plain loop) only on the export's own files: the cache's gain, not a frontier point
        caches = ("shared", "padded") if precision in ("fp32", "int8", "int4") else ("shared",)
        for cache in caches:
            key = f"ours-{cache}:{precision}:c1"
            if key in done:
                continue
            try:
                row = child(ME, "bare-one", path, cache, env={"OMP_NUM_THREADS": str(data.THREADS)})
            except ChildFailed as e:
                print(f"{key} failed: {str(e).strip().splitlines()[-1]}")
                continue
            record(key, {"backend": f"ours-{cache}", "precision": precision, "concurrency": 1,
                         "file_mb": data.file_mb([path, path.with_name(path.name + ".data")]), **row})  # fmt: skip
    for precision in () if bare_only else ("fp32", "int8", "int4"):
        path = our_files().get(precision)
        if path is None or (only and precision not in only.split(",")):
            continue
        for concurrency in CONCURRENCY:
            key = f"ours-engine:{precision}:c{concurrency}"
            if key not in done:
                row = child(ME, "engine-one", path, concurrency)
                record(key, {"backend": "ours-engine", "precision": precision, "concurrency": concurrency, **row})
        for concurrency in CONCURRENCY:  # onnxruntime-genai's own request engine on the same file
            key = f"genai-engine:{precision}:c{concurrency}"
            if key not in done:
                row = genai_engine(path, concurrency)
                if row:
                    record(key, {"backend": "genai-engine", "precision": precision, "concurrency": concurrency,
                                 **row})  # fmt: skip
        if not any(r.startswith(f"adamix-serve:{precision}:") for r in done):
            for row in served(precision, 8790):
                key = f"adamix-serve:{precision}:c{row['concurrency']}"
                record(key, {"backend": "adamix-serve", "precision": precision, **row})


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {ME}")
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build")
    b.add_argument("--quantize", action="append", default=None, help="precisions to export (default int8, int4)")
    s = sub.add_parser("speed")
    s.add_argument("--only", help="only these files, by precision or variant name, comma-separated")
    s.add_argument("--results", type=Path, default=data.SPEED, help="the result file (default data.SPEED)")
    s.add_argument("--bare-only", action="store_true", help="batch 1 only (the speed rounds: ROUNDS)")
    sub.add_parser("report")
    one = sub.add_parser("bare-one")
    one.add_argument("path")
    one.add_argument("cache", choices=["shared", "padded"])
    e = sub.add_parser("engine-one")
    e.add_argument("path")
    e.add_argument("concurrency", type=int)
    sub.add_parser("bandwidth-one")
    options = parser.parse_args()
    if options.step == "build":
        build(options.quantize or ["int8", "int4"])
    elif options.step == "speed":
        speed(options.only, options.results, options.bare_only)
    elif options.step == "report":
        from benchmarks.generation_frontier.report import report

        report()
    elif options.step == "bare-one":
        print(json.dumps(bare_one(options.path, options.cache)))
    elif options.step == "engine-one":
        print(json.dumps(engine_one(options.path, options.concurrency)))
    elif options.step == "bandwidth-one":
        print(json.dumps(bandwidth()))


if __name__ == "__main__":
    main()
