"""Which weight-only quantised decoder is worth serving? The fp32, int8 and int4 exports of one merged SmolLM2-135M
AdaMix-LoRA, their quality on E2E and their speed against PyTorch `generate`. Not a test: prints tables, writes
JSON + PNG.

    python -m benchmarks.decoder_quantization build     # train (AdaMix-LoRA on E2E devset pairs), export fp32+int8+int4
    python -m benchmarks.decoder_quantization quality   # BLEU / ROUGE-L per file on E2E test (resumable per file)
    python -m benchmarks.decoder_quantization speed     # tokens/s, first-token time, RSS: each backend its own process
    python -m benchmarks.decoder_quantization report    # tables (and docs/benchmarks/quantization.md), plot
    add --genai-python .venv/bin/python to build, quality and speed to include onnxruntime-genai's own int4
    model of the same merged folder (its builder's defaults), run by its own generate loop (benchmarks/genai_peer.py)

- Model: SmolLM2-135M-Instruct (the packaged GGUF, float32), AdaMix-LoRA M=4 on q_proj / v_proj with the
  `nlg-lora` recipe (r 4, alpha 32, shared B, consistency 100, label smoothing 0.1), trained on TRAIN_PAIRS
  seeded (MR, reference) pairs of `e2e/devset.csv` for one epoch, lr LR. One merged model, three files.
- Parity (in the export): the 8 built-in prompts x 32 greedy steps (`adamix-export --parity-prompts 8 --greedy-steps 32`).
- Quality: greedy decoding (the numpy KV-cache loop `serving.engine.onnx_loops.greedy_generate`, which the
  server's engine equals token for token: tests/serving/engine/test_generation_engine.py) of the first TEST_MRS
  distinct MRs of `e2e/testset_w_refs.csv`, at most MAX_NEW_TOKENS tokens; corpus BLEU against all references of each MR
  (sacrebleu) and best-reference ROUGE-L F1. Differences to fp32 carry a paired bootstrap 95 % interval over
  the MRs (BOOTSTRAP resamples).
- Served: `adamix-serve --precision P` on the same export, SERVED_PROMPTS test MRs of at most SPEED_TOKENS new
  tokens, one request at a time and then all at once (the engine's continuous batching), tokens/s as reported
  by the server's usage counts over the wall time.
- Speed: one process per backend, one after the other, threads THREADS; SPEED_PROMPTS prompts, each decoding
  exactly SPEED_TOKENS tokens (eos ignored), after one warm-up; tokens/s = generated tokens / decode time
  (median over REPEATS rounds), first-token time = the prompt's forward pass (median), peak RSS of the process.
  Run it on an otherwise idle machine: the training benchmarks must be paused.
Results: results/quantize_quality.jsonl (one line per file), quantize_speed.json, and the summary quantize.json
that `report` writes from them and the export (parity, sizes); without the export (results/tmp is not
committed) `report` shows the committed summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from benchmarks.common.load import generation_tokens_per_s
from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import DATA, RESULTS, WORK
from benchmarks.common.plots import pyplot, save
from benchmarks.common.servers import adamix_server
from benchmarks.common.subprocesses import ChildFailed, child, command
from benchmarks.common.trials import append_record, read_records

os.environ.setdefault("HF_HUB_OFFLINE", "1")

E2E = DATA / "e2e"
QUANTIZE = WORK / "quantize"  # git-ignored
CHECKPOINT, EXPORT, GENAI = QUANTIZE / "ckpt", QUANTIZE / "gen.onnx", QUANTIZE / "genai-int4"
PEER = Path(__file__).resolve().parent / "genai_peer.py"
QUALITY_FILE, SPEED_FILE, SUMMARY = "quantize_quality.jsonl", "quantize_speed.json", "quantize.json"
ME = "benchmarks.decoder_quantization"

TRAIN_PAIRS, LR, SEED = 320, 2e-3, 0
TEST_MRS, MAX_NEW_TOKENS, BOOTSTRAP = 200, 64, 1000
SPEED_PROMPTS, SPEED_TOKENS, REPEATS, THREADS, SERVED_PROMPTS = 4, 32, 3, 2, 8
PRECISIONS = ("fp32", "int8", "int4")  # our files; "genai-int4" is the peer's
BACKENDS = ("pytorch-generate-fp32", "onnx-fp32", "onnx-int8", "onnx-int4")


def test_mrs() -> list[tuple[str, list[str]]]:
    from adamix_deploy.data import group_references, read_generation

    return group_references(read_generation(E2E / "testset_w_refs.csv"))[:TEST_MRS]


def build(genai_python: str | None) -> None:
    QUANTIZE.mkdir(parents=True, exist_ok=True)
    if not (CHECKPOINT / "adamix_config.json").exists():
        command("adamix-train", "--model", "smollm2", "--task", "generation", "--train-file", E2E / "devset.csv",
                "--max-train-examples", TRAIN_PAIRS, "--method", "lora", "--recipe", "nlg-lora", "--experts", 4,
                "--epochs", 1, "--batch-size", 8, "--max-length", 128, "--lr", LR, "--seed", SEED,
                "--threads", THREADS, "--quiet", "--output", CHECKPOINT, "--overwrite")  # fmt: skip
    if not (EXPORT / "adamix_manifest.json").exists():
        started = time.perf_counter()
        command("adamix-export", "--merge", CHECKPOINT, "--output", EXPORT, "--quantize", "int8", "--quantize",
                "int4", "--parity-prompts", 8, "--greedy-steps", 32, "--overwrite")  # fmt: skip
        print(f"export took {time.perf_counter() - started:.0f} s")
    if genai_python and not (GENAI / "genai_config.json").exists():
        print(_peer(genai_python, "build", str(EXPORT / "merged"), str(GENAI), "--threads", str(THREADS)))


def _peer(python: str, *args: str) -> dict:
    """genai_peer.py run by the other environment's Python (it imports nothing of this project)."""
    import subprocess

    out = subprocess.run([python, str(PEER), *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prompts_file(count: int) -> str:
    """The first ``count`` test MRs laid out and tokenised as the server does, for the genai peer."""
    from adamix_deploy.serving.engine.model_folder import read_model_folder

    served = read_model_folder(EXPORT)
    template = served.manifest.prompt_template or "{prompt}\n"
    path = QUANTIZE / f"prompt-ids-{count}.json"
    ids = [
        served.tokenizer.encode(template.format(prompt=mr), add_special_tokens=False).ids
        for mr, _ in test_mrs()[:count]
    ]
    path.write_text(json.dumps(ids))
    return str(path)


def quality(genai_python: str | None) -> None:
    from adamix_deploy.contracts.export_folder import read_manifest
    from adamix_deploy.evaluation import generation_scores
    from adamix_deploy.serving.engine.model_folder import read_model_folder
    from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session

    manifest = read_manifest(EXPORT)
    done = {r["precision"] for r in read_records(RESULTS / QUALITY_FILE)}
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
        append_record(RESULTS / QUALITY_FILE, row)
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
        append_record(RESULTS / QUALITY_FILE, row)
        print(f"genai-int4: BLEU {scores['bleu']:.2f} ROUGE-L {scores['rouge_l']:.2f} ({row['seconds']} s)")


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
    from adamix_deploy.contracts.export_folder import read_manifest
    from adamix_deploy.serving.engine.model_folder import read_model_folder

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
    from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session, sequence_logits

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
    server = adamix_server(EXPORT, port, "--precision", precision, "--threads", str(THREADS))
    url = f"{server.url}/v1/models/{EXPORT.name}/generate"
    prompts = [mr for mr, _ in test_mrs()[:SERVED_PROMPTS]]
    sequential, concurrent = generation_tokens_per_s(
        url, prompts, {"max_new_tokens": SPEED_TOKENS, "temperature": 0}
    )
    memory = server.memory()
    server.stop()
    return {"backend": f"adamix-serve {precision}", "tokens_per_s_1_at_a_time": sequential,
            f"tokens_per_s_{SERVED_PROMPTS}_concurrent": concurrent, "ready_s": server.ready_s,
            "peak_rss_mib": memory["VmHWM"]}  # fmt: skip


def speed(genai_python: str | None) -> None:
    rows = []
    for backend in BACKENDS:
        try:
            rows.append(child(ME, "speed-one", backend, env={"OMP_NUM_THREADS": str(THREADS)}))
        except ChildFailed as e:
            print(f"{backend} failed: {str(e).strip().splitlines()[-1:]}")
            continue
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
def summarize() -> dict:
    """The summary of the quality and speed files with the export's parity report and file sizes."""
    from adamix_deploy.contracts.export_folder import read_manifest

    manifest = read_manifest(EXPORT)
    quality_rows = {r["precision"]: r for r in read_records(RESULTS / QUALITY_FILE)}
    speed_data = json.loads((RESULTS / SPEED_FILE).read_text()) if (RESULTS / SPEED_FILE).exists() else {}
    refs = [r for _, r in test_mrs()]
    summary = {"parity": manifest.parity, "quantization": manifest.onnx.quantization, "files": {}, "quality": {},
               "speed": speed_data.get("backends", [])}  # fmt: skip
    for precision in (*PRECISIONS, "genai-int4"):
        name = manifest.onnx.models.get(precision, "genai-int4/model.onnx" if precision == "genai-int4" else None)
        row = quality_rows.get(precision)
        if name is None or row is None:
            continue
        if precision == "genai-int4":
            manifest.files[name] = sum(
                p.stat().st_size for p in GENAI.iterdir() if p.name.startswith("model.onnx")
            )
        diff = (paired_bootstrap(row["predictions"], quality_rows["fp32"]["predictions"], refs)
                if precision != "fp32" and "fp32" in quality_rows else None)  # fmt: skip
        summary["files"][name] = manifest.files[name]
        summary["quality"][precision] = {k: row[k] for k in ("bleu", "rouge_l", "inputs")} | {"bleu_vs_fp32": diff}
    summary["servers"] = speed_data.get("servers", [])
    return summary


def report() -> None:
    if (EXPORT / "adamix_manifest.json").exists():
        (RESULTS / SUMMARY).write_text(json.dumps(summarize(), indent=1))
    else:
        print(f"(no export in {EXPORT}: the tables come from the committed {SUMMARY})")
    summary = json.loads((RESULTS / SUMMARY).read_text())
    out = Markdown()
    stages = summary["parity"]["stages"]
    rows = []
    for (precision, quality), (name, size) in zip(
        summary["quality"].items(), summary["files"].items(), strict=True
    ):
        stage = stages.get(f"onnx_{precision}", {})
        diff = quality["bleu_vs_fp32"]
        rows.append([
            name, f"{size / 1e6:.1f}", f"{quality['bleu']:.2f}", f"{quality['rouge_l']:.2f}",
            f"{diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}]" if diff else "-",
            f"{stage['greedy_tokens_identical']:.2f}" if stage else "-",
            f"{stage['next_token_agreement']:.3f}" if stage else "-",
            f"{stage['max_abs_logit_diff']:.3g}" if stage else "-",
        ])  # fmt: skip
    out.table(["file", "MB", "BLEU", "ROUGE-L", "BLEU vs fp32 (95 % bootstrap)", "greedy identical (parity)",
               "next-token agreement", "max \\|Δlogit\\|"], rows)  # fmt: skip
    speed_rows, server_rows = summary["speed"], summary["servers"]
    if speed_rows:
        base = next((r["tokens_per_s"] for r in speed_rows if r["backend"] == "pytorch-generate-fp32"), None)
        out()
        out.table(["backend", "tokens/s", "vs PyTorch generate", "first token ms", "load s", "peak RSS MiB"],
                  [[r["backend"], f"{r['tokens_per_s']:.1f}", f"{r['tokens_per_s'] / base:.2f}x" if base else "-",
                    f"{r['first_token_ms']:.1f}", r["load_s"], f"{r['peak_rss_mib']:.0f}"] for r in speed_rows])  # fmt: skip
    if server_rows:
        out()
        out.table(["server", "tokens/s, 1 at a time", f"tokens/s, {SERVED_PROMPTS} concurrent", "ready s",
                   "peak RSS MiB"],
                  [[r["backend"], f"{r['tokens_per_s_1_at_a_time']:.1f}",
                    f"{r[f'tokens_per_s_{SERVED_PROMPTS}_concurrent']:.1f}", f"{r['ready_s']:.2f}",
                    f"{r['peak_rss_mib']:.0f}"] for r in server_rows])  # fmt: skip
    publish(out, "quantization.md", "decoders")
    _plot(summary, RESULTS / "quantize.png")


def _plot(summary: dict, path: Path) -> None:
    plt = pyplot()
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
    save(fig, path, 120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["build", "quality", "speed", "speed-one", "report"])
    parser.add_argument("backend", nargs="?", choices=BACKENDS, help="speed-one (a child process): the backend")
    parser.add_argument("--genai-python", help="the Python of a venv with onnxruntime-genai (genai_peer.py)")
    args = parser.parse_args()
    if args.phase == "report":
        return report()
    if not E2E.is_dir():
        raise SystemExit(f"skipped: {E2E} not found (the real data sets live in ../shared/data)")
    if args.phase != "build" and not (EXPORT / "adamix_manifest.json").exists():
        raise SystemExit(f"no export in {EXPORT}: run `build` first")
    if args.phase == "speed-one":
        speed_one(args.backend)
    else:
        {"build": build, "quality": quality, "speed": speed}[args.phase](args.genai_python)


if __name__ == "__main__":
    main()
