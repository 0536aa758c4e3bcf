"""Weight-only quantised decoders (issue 12): the fp32, int8 and int4 exports of one merged SmolLM2-135M AdaMix-LoRA,
their quality on E2E and their speed against PyTorch `generate`. Not a test: prints tables, writes JSON + PNG.

    python benchmarks/bench_quantize.py build     # train (AdaMix-LoRA on E2E devset pairs) and export fp32+int8+int4
    python benchmarks/bench_quantize.py quality   # BLEU / ROUGE-L per file on E2E test (resumable per file)
    python benchmarks/bench_quantize.py speed     # tokens/s, first-token time, RSS: each backend its own process
    python benchmarks/bench_quantize.py report
    add --genai-python /work/genai-venv/bin/python to build, quality and speed to include onnxruntime-genai's own
    int4 model of the same merged folder, run by its own generate loop (benchmarks/genai_peer.py says how to make
    that venv: genai's builder needs transformers >= 5, this project pins 4.57)

- Model: SmolLM2-135M-Instruct (the packaged GGUF, float32), AdaMix-LoRA M=4 on q_proj / v_proj with the
  `nlg-lora` recipe (r 4, alpha 32, shared B, consistency 100, label smoothing 0.1), trained on TRAIN_PAIRS
  seeded (MR, reference) pairs of `e2e/devset.csv` for one epoch, lr LR. One merged model, three files.
- Parity (in the export): the 8 built-in prompts x 32 greedy steps (`adamix-export --parity-prompts 8 --greedy-steps 32`).
- Quality: greedy decoding (the numpy KV-cache loop `exporters.onnx_loops.greedy_generate`, which the server's
  engine equals token for token: tests/test_generation_engine.py) of the first TEST_MRS distinct MRs of
  `e2e/testset_w_refs.csv`, at most MAX_NEW_TOKENS tokens; corpus BLEU against all references of each MR
  (sacrebleu) and best-reference ROUGE-L F1. Differences to fp32 carry a paired bootstrap 95 % interval over
  the MRs (BOOTSTRAP resamples).
- Served: `adamix-serve --precision P` on the same export, SERVED_PROMPTS test MRs of at most SPEED_TOKENS new
  tokens, one request at a time and then all at once (the engine's continuous batching), tokens/s as reported
  by the server's usage counts over the wall time.
- Speed: one process per backend, one after the other, threads THREADS; SPEED_PROMPTS prompts, each decoding
  exactly SPEED_TOKENS tokens (eos ignored), after one warm-up; tokens/s = generated tokens / decode time
  (median over REPEATS rounds), first-token time = the prompt's forward pass (median), peak RSS of the process.
  Run it on an otherwise idle machine: the training benchmarks must be paused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = RESULTS / "tmp" / "quantize"  # git-ignored
DATA = ROOT.parent.parent / "shared" / "data" / "e2e"
CHECKPOINT, EXPORT, GENAI = WORK / "ckpt", WORK / "gen.onnx", WORK / "genai-int4"
PEER = ROOT / "genai_peer.py"
QUALITY_FILE, SPEED_FILE, SUMMARY = "quantize_quality.jsonl", "quantize_speed.json", "quantize.json"

TRAIN_PAIRS, LR, SEED = 320, 2e-3, 0
TEST_MRS, MAX_NEW_TOKENS, BOOTSTRAP = 200, 64, 1000
SPEED_PROMPTS, SPEED_TOKENS, REPEATS, THREADS, SERVED_PROMPTS = 4, 32, 3, 2, 8
PRECISIONS = ("fp32", "int8", "int4")  # our files; "genai-int4" is the peer's
BACKENDS = ("pytorch-generate-fp32", "onnx-fp32", "onnx-int8", "onnx-int4")


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_mrs() -> list[tuple[str, list[str]]]:
    from adamix_deploy.data import group_references, read_generation

    return group_references(read_generation(DATA / "testset_w_refs.csv"))[:TEST_MRS]


def build(genai_python: str | None) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    if not (CHECKPOINT / "adamix_config.json").exists():
        subprocess.run([bin_path("adamix-train"), "--model", "smollm2", "--task", "generation",
                        "--train-file", str(DATA / "devset.csv"), "--max-train-examples", str(TRAIN_PAIRS),
                        "--method", "lora", "--recipe", "nlg-lora", "--experts", "4", "--epochs", "1",
                        "--batch-size", "8", "--max-length", "128", "--lr", str(LR), "--seed", str(SEED),
                        "--threads", str(THREADS), "--quiet", "--output", str(CHECKPOINT), "--overwrite"],
                       check=True)  # fmt: skip
    if not (EXPORT / "adamix_manifest.json").exists():
        started = time.perf_counter()
        out = subprocess.run([bin_path("adamix-export"), "--merge", str(CHECKPOINT), "--output", str(EXPORT),
                              "--quantize", "int8", "--quantize", "int4", "--parity-prompts", "8", "--greedy-steps",
                              "32", "--overwrite"], check=True, capture_output=True, text=True)  # fmt: skip
        print(out.stderr.strip(), f"\nexport took {time.perf_counter() - started:.0f} s")
    if genai_python and not (GENAI / "genai_config.json").exists():
        print(_peer(genai_python, "build", str(EXPORT / "merged"), str(GENAI), "--threads", str(THREADS)))


def _peer(python: str, *args: str) -> dict:
    out = subprocess.run([python, str(PEER), *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prompts_file(count: int) -> str:
    """The first ``count`` test MRs laid out and tokenised as the server does, for the genai peer."""
    from adamix_deploy.serving.model_folder import read_model_folder

    served = read_model_folder(EXPORT)
    template = served.manifest.prompt_template or "{prompt}\n"
    path = WORK / f"prompt-ids-{count}.json"
    ids = [
        served.tokenizer.encode(template.format(prompt=mr), add_special_tokens=False).ids
        for mr, _ in test_mrs()[:count]
    ]
    path.write_text(json.dumps(ids))
    return str(path)


def quality(genai_python: str | None) -> None:
    from adamix_deploy.evaluation import generation_scores
    from adamix_deploy.exporters.export_folder import read_manifest
    from adamix_deploy.exporters.onnx_loops import greedy_generate, open_session
    from adamix_deploy.serving.model_folder import read_model_folder

    manifest = read_manifest(EXPORT)
    done = {r["precision"] for r in _read_lines(RESULTS / QUALITY_FILE)}
    items = test_mrs()
    for precision in PRECISIONS:
        if precision in done:
            continue
        served = read_model_folder(EXPORT, precision)  # the server's tokenizer and eos ids
        session = open_session(EXPORT / manifest.onnx_file(precision), threads=THREADS)
        template = manifest.prompt_template or "{prompt}\n"
        eos = min(served.eos_token_ids) if served.eos_token_ids else None
        started, predictions = time.perf_counter(), []
        for mr, _ in items:
            ids = served.tokenizer.encode(template.format(prompt=mr), add_special_tokens=False).ids
            tokens, _ = greedy_generate(session, ids, MAX_NEW_TOKENS, eos)
            predictions.append(served.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        scores = generation_scores(predictions, [refs for _, refs in items])
        row = {"precision": precision, "file": manifest.onnx_file(precision), **scores,
               "seconds": round(time.perf_counter() - started, 1), "predictions": predictions}  # fmt: skip
        with (RESULTS / QUALITY_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{precision}: BLEU {scores['bleu']:.2f} ROUGE-L {scores['rouge_l']:.2f} ({row['seconds']} s)",
            flush=True,
        )
    if genai_python and "genai-int4" not in done and (GENAI / "genai_config.json").exists():
        started = time.perf_counter()
        tokens = _peer(genai_python, "decode", str(GENAI), _prompts_file(TEST_MRS), "--max-new-tokens",
                       str(MAX_NEW_TOKENS))["tokens"]  # fmt: skip
        served = read_model_folder(EXPORT)
        predictions = [served.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        scores = generation_scores(predictions, [refs for _, refs in items])
        row = {"precision": "genai-int4", "file": "genai-int4/model.onnx", **scores,
               "seconds": round(time.perf_counter() - started, 1), "predictions": predictions}  # fmt: skip
        with (RESULTS / QUALITY_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"genai-int4: BLEU {scores['bleu']:.2f} ROUGE-L {scores['rouge_l']:.2f} ({row['seconds']} s)")


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def paired_bootstrap(
    a: list[str], b: list[str], refs: list[list[str]], seed: int = 0
) -> tuple[float, float, float]:
    """BLEU(a) - BLEU(b) on the MRs, and its 95 % percentile interval over BOOTSTRAP resampled MR sets. As
    sacrebleu's own paired bootstrap does, each resample sums the sentences' n-gram statistics (computed
    once) instead of re-scoring the text."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]

    def stats(predictions):  # one row of n-gram statistics per MR (sacrebleu's significance module does this)
        return np.array(metric._extract_corpus_statistics(predictions, streams), dtype=np.int64)

    def score(rows) -> float:
        return metric._compute_score_from_stats(rows.sum(axis=0).tolist()).score

    sa, sb = stats(a), stats(b)
    rng = np.random.default_rng(seed)
    diffs = sorted(score(sa[pick]) - score(sb[pick]) for pick in rng.integers(0, len(a), (BOOTSTRAP, len(a))))
    return score(sa) - score(sb), diffs[int(0.025 * BOOTSTRAP)], diffs[int(0.975 * BOOTSTRAP) - 1]


# -- speed: one backend per process ------------------------------------------------------------------------------
def speed_one(backend: str) -> None:
    """Prints one JSON line for ``backend`` (run in a fresh process by `speed`)."""
    from adamix_deploy.exporters.export_folder import read_manifest
    from adamix_deploy.serving.model_folder import read_model_folder

    manifest = read_manifest(EXPORT)
    served = read_model_folder(EXPORT, "fp32")
    template = manifest.prompt_template or "{prompt}\n"
    prompts = [served.tokenizer.encode(template.format(prompt=mr), add_special_tokens=False).ids
               for mr, _ in test_mrs()[:SPEED_PROMPTS]]  # fmt: skip
    started = time.perf_counter()
    if backend.startswith("onnx-"):
        first, decode = _onnx_backend(EXPORT / manifest.onnx_file(backend.removeprefix("onnx-")))
    else:
        first, decode = _torch_backend(EXPORT / "merged")
    load_seconds = time.perf_counter() - started
    decode(prompts[0], 4)  # warm-up
    rates, firsts = [], []
    for _ in range(REPEATS):
        for ids in prompts:
            firsts.append(first(ids))
            t = time.perf_counter()
            decode(ids, SPEED_TOKENS)
            rates.append(SPEED_TOKENS / (time.perf_counter() - t))
    print(json.dumps({
        "backend": backend, "tokens_per_s": statistics.median(rates), "tokens_per_s_runs": [round(r, 2) for r in rates],
        "first_token_ms": 1000 * statistics.median(firsts), "load_s": round(load_seconds, 2),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def _onnx_backend(path: Path):
    from adamix_deploy.exporters.onnx_loops import greedy_generate, open_session, sequence_logits

    session = open_session(path, threads=THREADS)

    def first(ids):
        t = time.perf_counter()
        sequence_logits(session, ids)
        return time.perf_counter() - t

    return first, lambda ids, n: greedy_generate(session, ids, n, None)


def _torch_backend(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()

    @torch.no_grad()
    def first(ids):
        t = time.perf_counter()
        model(input_ids=torch.tensor([ids]))
        return time.perf_counter() - t

    @torch.no_grad()
    def decode(ids, n):
        x = torch.tensor([ids])
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)  # fmt: skip

    return first, decode


def served(precision: str, port: int) -> dict:
    """Tokens/s through `adamix-serve --precision` for SERVED_PROMPTS greedy requests of SPEED_TOKENS new tokens
    (eos ignored by asking for min tokens is not in the API, so the count is what the server reports): one at
    a time, then all at once (continuous batching)."""
    import asyncio

    import httpx

    sys.path.insert(0, str(ROOT))
    from bench_serve import adamix_server

    server = adamix_server(EXPORT, port, "--precision", precision, "--threads", str(THREADS))
    url = f"{server.url}/v1/models/{EXPORT.name}/generate"
    body = {"max_new_tokens": SPEED_TOKENS, "temperature": 0}
    prompts = [mr for mr, _ in test_mrs()[:SERVED_PROMPTS]]
    httpx.post(url, json={**body, "prompt": prompts[0]}, timeout=300)  # warm-up
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        tokens += httpx.post(url, json={**body, "prompt": prompt}, timeout=300).json()["usage"][
            "completion_tokens"
        ]
    sequential = tokens / (time.perf_counter() - start)

    async def together() -> int:
        async with httpx.AsyncClient(timeout=300) as client:
            answers = await asyncio.gather(*(client.post(url, json={**body, "prompt": p}) for p in prompts))
        return sum(a.json()["usage"]["completion_tokens"] for a in answers)

    start = time.perf_counter()
    concurrent = asyncio.run(together()) / (time.perf_counter() - start)
    memory = server.stop()
    return {"backend": f"adamix-serve {precision}", "tokens_per_s_1_at_a_time": sequential,
            f"tokens_per_s_{SERVED_PROMPTS}_concurrent": concurrent, "ready_s": server.ready_s,
            "peak_rss_mib": memory["VmHWM"]}  # fmt: skip


def speed(genai_python: str | None) -> None:
    rows = []
    for backend in BACKENDS:
        out = subprocess.run([sys.executable, __file__, "speed-one", backend], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})  # fmt: skip
        if out.returncode != 0:
            print(f"{backend} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if genai_python and (GENAI / "genai_config.json").exists():
        rows.append(_peer(genai_python, "speed", str(GENAI), _prompts_file(SPEED_PROMPTS), "--tokens",
                          str(SPEED_TOKENS), "--repeats", str(REPEATS)))  # fmt: skip
        rows[-1]["model_bytes"] = sum(p.stat().st_size for p in GENAI.iterdir() if p.name.startswith("model.onnx"))
        print(rows[-1], flush=True)
    servers = []
    for i, precision in enumerate(PRECISIONS):
        servers.append(served(precision, 8700 + i))
        print(servers[-1], flush=True)
    (RESULTS / SPEED_FILE).write_text(
        json.dumps({"threads": THREADS, "backends": rows, "servers": servers}, indent=1)
    )


# -- report ------------------------------------------------------------------------------------------------------
def report() -> None:
    from adamix_deploy.exporters.export_folder import read_manifest

    manifest = read_manifest(EXPORT)
    quality_rows = {r["precision"]: r for r in _read_lines(RESULTS / QUALITY_FILE)}
    speed_data = json.loads((RESULTS / SPEED_FILE).read_text()) if (RESULTS / SPEED_FILE).exists() else {}
    speed_rows, server_rows = speed_data.get("backends", []), speed_data.get("servers", [])
    refs = [r for _, r in test_mrs()]
    summary = {"parity": manifest.parity, "quantization": manifest.onnx.quantization, "files": {}, "quality": {},
               "speed": speed_rows}  # fmt: skip
    print(
        "| file | MB | BLEU | ROUGE-L | BLEU vs fp32 (95 % bootstrap) | greedy identical | next-token agreement | max |Δlogit| |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for precision in (*PRECISIONS, "genai-int4"):
        name = manifest.onnx.models.get(precision, "genai-int4/model.onnx" if precision == "genai-int4" else None)
        row, stage = quality_rows.get(precision), manifest.parity["stages"].get(f"onnx_{precision}", {})
        if name is None or row is None:
            continue
        if precision == "genai-int4":
            manifest.files[name] = sum(
                p.stat().st_size for p in GENAI.iterdir() if p.name.startswith("model.onnx")
            )
            stage = {"greedy_tokens_identical": float("nan"), "next_token_agreement": float("nan"),
                     "max_abs_logit_diff": float("nan")}  # fmt: skip
        diff = (paired_bootstrap(row["predictions"], quality_rows["fp32"]["predictions"], refs)
                if precision != "fp32" and "fp32" in quality_rows else None)  # fmt: skip
        summary["files"][name] = manifest.files[name]
        summary["quality"][precision] = {k: row[k] for k in ("bleu", "rouge_l", "inputs")} | {"bleu_vs_fp32": diff}
        cell = f"{diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}]" if diff else "-"
        print(f"| {name} | {manifest.files[name] / 1e6:.1f} | {row['bleu']:.2f} | {row['rouge_l']:.2f} | {cell} | "
              f"{stage.get('greedy_tokens_identical', 1.0):.2f} | {stage.get('next_token_agreement', 1.0):.3f} | "
              f"{stage.get('max_abs_logit_diff', 0.0):.3g} |")  # fmt: skip
    if speed_rows:
        base = next((r["tokens_per_s"] for r in speed_rows if r["backend"] == "pytorch-generate-fp32"), None)
        print("\n| backend | tokens/s | vs PyTorch generate | first token ms | load s | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for r in speed_rows:
            ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            print(f"| {r['backend']} | {r['tokens_per_s']:.1f} | {ratio} | {r['first_token_ms']:.1f} | {r['load_s']} | "
                  f"{r['peak_rss_mib']:.0f} |")  # fmt: skip
    if server_rows:
        print(
            f"\n| server | tokens/s, 1 at a time | tokens/s, {SERVED_PROMPTS} concurrent | ready s | peak RSS MiB |"
        )
        print("|---|---|---|---|---|")
        for r in server_rows:
            print(f"| {r['backend']} | {r['tokens_per_s_1_at_a_time']:.1f} | "
                  f"{r[f'tokens_per_s_{SERVED_PROMPTS}_concurrent']:.1f} | {r['ready_s']:.2f} | {r['peak_rss_mib']:.0f} |")  # fmt: skip
    summary["servers"] = server_rows
    (RESULTS / SUMMARY).write_text(json.dumps(summary, indent=1))
    _plot(summary, RESULTS / "quantize.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    precisions = list(summary["quality"])
    left.bar(precisions, [summary["quality"][p]["bleu"] for p in precisions])
    left.set_ylabel(f"E2E test BLEU ({TEST_MRS} MRs, all references)")
    left.set_title("same merged SmolLM2 AdaMix-LoRA, greedy")
    if summary["speed"]:
        names = [r["backend"] for r in summary["speed"]]
        right.bar(names, [r["tokens_per_s"] for r in summary["speed"]])
        right.set_ylabel(f"tokens/s, batch 1, {THREADS} threads")
        right.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["build", "quality", "speed", "speed-one", "report"])
    parser.add_argument("backend", nargs="?", choices=BACKENDS)
    parser.add_argument("--genai-python", help="the Python of a venv with onnxruntime-genai (genai_peer.py)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} not found (the real data sets live in ../shared/data)")
    if args.phase != "build" and not (EXPORT / "adamix_manifest.json").exists():
        sys.exit(f"no export in {EXPORT}: run `build` first")
    if args.phase == "speed-one":
        speed_one(args.backend)
    elif args.phase == "report":
        report()
    else:
        {"build": build, "quality": quality, "speed": speed}[args.phase](args.genai_python)


if __name__ == "__main__":
    main()
