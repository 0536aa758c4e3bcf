"""What does a merged export cost against the base model? Latency of the merged exports (MiniLM-L6 classifier,
SmolLM2-135M decoder) against the base model's own export, file sizes, and int8 accuracy and agreement.

    python -m benchmarks.merged_exports all        # build (below), then measure and report
    python -m benchmarks.merged_exports build [--only cls-lora ...]   # checkpoints + exports in results/tmp/
    python -m benchmarks.merged_exports measure
    python -m benchmarks.merged_exports report     # tables (and docs/benchmarks/export.md), plot

`build` trains the checkpoints the serving benchmarks use too (`export_folder("cls-lora")`, ...): MiniLM-L6
head only, AdaMix-LoRA M=4 (1,000 SST-2 sentences, 3 epochs), AdaMix-adapter M=4; SmolLM2 untrained (the base
reference) and AdaMix-LoRA M=4; their exports, the LoRA ones quantised (int8; the decoder int8 and int4).
MiniLM-L6 classifier, sequence length 128 (padded), batch 1 and 8: base model ONNX (no adaptation) vs
merged-LoRA ONNX vs merged-adapter ONNX vs ONNX int8, and PyTorch unmerged mixture vs PyTorch merged.
SmolLM2-135M greedy tokens/s: base ONNX vs merged-LoRA ONNX fp32 / weight-only int8 / int4 (our KV-cache loop)
vs PyTorch generate.
Every backend is timed in its own process (torch and onnxruntime thread pools fight over the cores), ROUNDS
rounds in alternation; each figure is the median over the rounds of each process's median of its repeats;
ratios compare figures from the same run. Results: results/export.json, export_latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Collection
from pathlib import Path

from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import DATA, RESULTS, WORK
from benchmarks.common.plots import pyplot, save
from benchmarks.common.subprocesses import child, command

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SST2 = DATA / "glue" / "SST-2"
THREADS = 2


def checkpoint_folder(name: str) -> Path:
    """A checkpoint `build` trains: cls-head, cls-lora, cls-adapter, gen-base, gen-lora."""
    return WORK / name


def export_folder(name: str) -> Path:
    """The export of `checkpoint_folder(name)`."""
    return WORK / f"{name}.onnx"


def build(only: Collection[str] = ()) -> None:
    """Checkpoints (trained on a seeded SST-2 subset) and their exports; reused when present. ``only`` names the
    ones to make (e.g. ``("cls-lora",)`` for the serving benchmarks); empty makes all of them."""
    WORK.mkdir(parents=True, exist_ok=True)
    common = ["--task", "classification", "--train-file", str(SST2 / "train.tsv"), "--eval-file", str(SST2 / "dev.tsv"),
              "--max-train-examples", "1000", "--max-length", "64", "--batch-size", "32", "--quiet"]  # fmt: skip
    jobs = {
        "cls-head": ["--method", "head", "--epochs", "1", "--max-train-examples", "64"],
        "cls-lora": ["--method", "lora", "--experts", "4", "--epochs", "3"],
        "cls-adapter": ["--method", "adapter", "--experts", "4", "--epochs", "1", "--max-train-examples", "64"],
    }
    for name, extra in jobs.items():
        if only and name not in only:
            continue
        if not (WORK / name / "adamix_config.json").exists():
            print(f"training {name}", flush=True)
            command("adamix-train", "--model", "minilm", *common, *extra, "--output", WORK / name, "--overwrite")
        if not (WORK / f"{name}.onnx" / "adamix_manifest.json").exists():
            print(f"exporting {name}", flush=True)
            quant = ["--quantize", "int8"] if name == "cls-lora" else []
            command("adamix-export", "--merge", WORK / name, "--output", WORK / f"{name}.onnx", *quant,
                    "--verify-file", SST2 / "dev.tsv", "--overwrite")  # fmt: skip
    gen = ["--task", "generation", "--train-file", str(DATA / "e2e/devset.csv"), "--max-train-examples", "16",
           "--batch-size", "8", "--max-length", "64", "--epochs", "1", "--quiet"]  # fmt: skip
    if (not only or "gen-base" in only) and not (WORK / "gen-base" / "adamix_config.json").exists():
        base_generation_checkpoint(WORK / "gen-base")
    for name, extra in {"gen-base": None, "gen-lora": ["--method", "lora", "--experts", "4"]}.items():
        if only and name not in only:
            continue
        if extra and not (WORK / name / "adamix_config.json").exists():
            print(f"training {name}", flush=True)
            command("adamix-train", "--model", "smollm2", *gen, *extra, "--output", WORK / name, "--overwrite")
        if not (WORK / f"{name}.onnx" / "adamix_manifest.json").exists():
            print(f"exporting {name}", flush=True)
            quant = ["--quantize", "int8", "--quantize", "int4"] if name == "gen-lora" else []
            command(
                "adamix-export", "--merge", WORK / name, "--output", WORK / f"{name}.onnx", *quant, "--overwrite"
            )


def base_generation_checkpoint(folder: Path) -> None:
    """SmolLM2 with no adaptation, as a (weightless) mixture checkpoint: the base-model reference export."""
    from adamix_deploy.checkpoint import checkpoint_config, save_checkpoint
    from adamix_deploy.config import MixtureSpec
    from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
    from adamix_deploy.packaged_models import resolve_model

    path = resolve_model("smollm2")
    tokenizer = load_tokenizer(path)
    model, head, spec = build_mixture_model(path, "generation", None, MixtureSpec("head"), tokenizer)
    config = checkpoint_config(
        model, "smollm2", path, "generation", None, spec, head,
        max_length=64, prompt_template="{prompt}\n", training={"complete": True, "note": "untrained base"},
    )  # fmt: skip
    save_checkpoint(folder, config, model, tokenizer)


def time_one(args) -> None:
    """Runs in its own process: prints {"median_ms": ..., "runs_ms": [...]}."""
    import numpy as np

    texts = ["a gripping, funny and quietly devastating film " * 6] * args.batch
    if args.backend.startswith("onnx"):
        from tokenizers import Tokenizer

        from adamix_deploy.serving.engine.onnx_loops import classify_logits, greedy_generate, open_session

        folder = Path(args.model)
        session = open_session(folder / args.file, threads=THREADS)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if args.task == "generation":
            ids = tok.encode("name[The Eagle], eatType[coffee shop], food[Japanese], area[riverside]\n").ids
            run = lambda: greedy_generate(session, ids, args.tokens, eos_token_id=None)  # noqa: E731
        else:
            tok.enable_truncation(128)
            tok.enable_padding(length=128)
            enc = tok.encode_batch(texts)
            batch = {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc]),
                     "token_type_ids": np.array([e.type_ids for e in enc])}  # fmt: skip
            run = lambda: classify_logits(session, batch)  # noqa: E731
    else:
        import torch

        from adamix_deploy.importers import detect_and_load
        from adamix_deploy.merge import merge_mixture_model
        from adamix_deploy.mixture import set_routing

        torch.set_num_threads(THREADS)
        ckpt = detect_and_load(Path(args.model))
        set_routing(ckpt.model, "average")
        model = merge_mixture_model(ckpt.model) if args.backend == "torch-merged" else ckpt.model
        if args.task == "generation":
            ids = ckpt.tokenizer("name[The Eagle], eatType[coffee shop], food[Japanese], area[riverside]\n",
                                 return_tensors="pt", add_special_tokens=False).input_ids  # fmt: skip
            run = lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,  # noqa: E731
                                         min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)  # fmt: skip
        else:
            batch = ckpt.tokenizer(
                texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt"
            )
            run = lambda: model(**batch)  # noqa: E731
        torch.inference_mode().__enter__()
    for _ in range(args.warmup):
        run()
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        runs.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"median_ms": statistics.median(runs), "runs_ms": runs}))


ROUNDS = 3  # every case once per round, in the same order; a case's figure is the median over the rounds


def measure() -> None:
    classifier_cases = [
        ("base ONNX fp32", "onnx", "cls-head.onnx", "model.onnx"),
        ("merged-LoRA ONNX fp32", "onnx", "cls-lora.onnx", "model.onnx"),
        ("merged-adapter ONNX fp32", "onnx", "cls-adapter.onnx", "model.onnx"),
        ("merged-LoRA ONNX int8", "onnx", "cls-lora.onnx", "model_int8.onnx"),
        ("unmerged mixture PyTorch", "torch-mixture", "cls-lora", ""),
        ("merged-LoRA PyTorch", "torch-merged", "cls-lora", ""),
    ]
    generation_cases = [
        ("base ONNX fp32 (KV cache)", "onnx", "gen-base.onnx", "model.onnx"),
        ("merged-LoRA ONNX fp32 (KV cache)", "onnx", "gen-lora.onnx", "model.onnx"),
        ("merged-LoRA ONNX int8 weight-only (KV cache)", "onnx", "gen-lora.onnx", "model_int8.onnx"),
        ("merged-LoRA ONNX int4 weight-only (KV cache)", "onnx", "gen-lora.onnx", "model_int4.onnx"),
        ("unmerged mixture PyTorch generate", "torch-mixture", "gen-lora", ""),
        ("merged-LoRA PyTorch generate", "torch-merged", "gen-lora", ""),
    ]
    medians: dict[tuple, list[float]] = {}
    for _ in range(ROUNDS):
        for batch in (1, 8):
            for label, backend, folder, file in classifier_cases:
                out = child("benchmarks.merged_exports", "time", "--backend", backend, "--model", WORK / folder,
                            "--file", file, "--batch", batch, "--repeats", 30 if batch == 1 else 15)  # fmt: skip
                medians.setdefault((label, batch), []).append(out["median_ms"])
        for label, backend, folder, file in generation_cases:
            out = child("benchmarks.merged_exports", "time", "--backend", backend, "--model", WORK / folder, "--file",
                        file, "--task", "generation", "--tokens", 32, "--repeats", 5, "--warmup", 1)  # fmt: skip
            medians.setdefault((label, "gen"), []).append(out["median_ms"])
    rows = []
    for batch in (1, 8):
        for label, *_ in classifier_cases:
            runs = medians[(label, batch)]
            rows.append(
                {
                    "case": label,
                    "batch": batch,
                    "seq": 128,
                    "median_ms": statistics.median(runs),
                    "rounds_ms": runs,
                }
            )
    for label, *_ in generation_cases:
        runs = medians[(label, "gen")]
        median = statistics.median(runs)
        rows.append(
            {
                "case": label,
                "tokens": 32,
                "tokens_per_s": 32 / (median / 1000),
                "median_ms": median,
                "rounds_ms": runs,
            }
        )
    sizes = {p.parent.name + "/" + p.name: p.stat().st_size for p in sorted(WORK.glob("*.onnx/*.onnx"))}
    accuracy = int8_accuracy()
    (RESULTS / "export.json").write_text(json.dumps({"latency": rows, "sizes": sizes, "int8": accuracy}, indent=1))
    report()


def int8_accuracy() -> dict:
    """fp32 vs int8 ONNX accuracy of the trained merged-LoRA classifier on the full SST-2 dev set."""
    return child("benchmarks.merged_exports", "accuracy", "--model", WORK / "cls-lora.onnx")


def accuracy_one(args) -> None:
    import numpy as np
    from tokenizers import Tokenizer

    from adamix_deploy.data import read_classification
    from adamix_deploy.serving.engine.onnx_loops import classify_logits, open_session

    folder = Path(args.model)
    manifest = json.loads((folder / "adamix_manifest.json").read_text())
    examples = read_classification(SST2 / "dev.tsv", labels=manifest["labels"])
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding()
    gold = np.array([manifest["labels"].index(e.label) for e in examples])
    result = {"examples": len(examples)}
    for file in ("model.onnx", "model_int8.onnx"):
        session = open_session(folder / file, threads=THREADS)
        predictions = []
        for start in range(0, len(examples), 64):
            enc = tok.encode_batch([e.text for e in examples[start : start + 64]])
            batch = {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc]),
                     "token_type_ids": np.array([e.type_ids for e in enc])}  # fmt: skip
            predictions.append(classify_logits(session, batch).argmax(-1))
        predictions = np.concatenate(predictions)
        result[file] = float((predictions == gold).mean())
        result.setdefault("predictions", {})[file] = predictions
    result["prediction_agreement"] = float(
        (result["predictions"]["model.onnx"] == result["predictions"]["model_int8.onnx"]).mean()
    )
    del result["predictions"]
    print(json.dumps(result))


def report() -> None:
    data = json.loads((RESULTS / "export.json").read_text())
    rows = data["latency"]
    out = Markdown()
    table = []
    for batch in (1, 8):
        base = next(r for r in rows if r.get("batch") == batch and r["case"] == "base ONNX fp32")["median_ms"]
        table += [[r["case"], batch, f"{r['median_ms']:.2f}", f"{r['median_ms'] / base:.3f}x"]
                  for r in rows if r.get("batch") == batch]  # fmt: skip
    out.table(["MiniLM-L6 classifier, seq 128", "batch", "median ms", "vs base ONNX"], table)
    gen = [r for r in rows if "tokens_per_s" in r]
    if gen:
        base = gen[0]["tokens_per_s"]
        out()
        out.table(["SmolLM2-135M greedy, 32 tokens, batch 1", "tokens/s", "vs base ONNX"],
                  [[r["case"], f"{r['tokens_per_s']:.1f}", f"{r['tokens_per_s'] / base:.3f}x"] for r in gen])  # fmt: skip
    out()
    out.table(["file", "MB"], [[name, f"{size / 1e6:.1f}"] for name, size in data["sizes"].items()])
    acc = data["int8"]
    disagree = round(acc["examples"] * (1 - acc["prediction_agreement"]))
    out(f"\nSST-2 dev ({acc['examples']} sentences), merged AdaMix-LoRA: fp32 ONNX accuracy "
        f"{100 * acc['model.onnx']:.2f} %, int8 {100 * acc['model_int8.onnx']:.2f} %, predictions agree on "
        f"{100 * acc['prediction_agreement']:.2f} % ({disagree} sentences differ)")  # fmt: skip
    publish(out, "export.md", "export")
    _plot(rows)


def _plot(rows) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, batch in zip(axes, (1, 8), strict=True):
        sel = [r for r in rows if r.get("batch") == batch]
        ax.barh([r["case"] for r in sel], [r["median_ms"] for r in sel], color="#4c72b0")
        ax.set_xlabel("median latency, ms")
        ax.set_title(f"MiniLM-L6, seq 128, batch {batch} (2 threads)")
        ax.invert_yaxis()
    save(fig, RESULTS / "export_latency.png", 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("all")
    sub.add_parser("build").add_argument(
        "--only", nargs="+", default=[], help="cls-head, cls-lora, cls-adapter, gen-base, gen-lora (default: all)"
    )
    sub.add_parser("measure")
    sub.add_parser("report")
    t = sub.add_parser("time", help="(a child process) one backend's latency")
    t.add_argument("--backend", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--file", default="model.onnx")
    t.add_argument("--task", default="classification")
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--tokens", type=int, default=32)
    t.add_argument("--repeats", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    a = sub.add_parser("accuracy", help="(a child process) fp32 and int8 accuracy on SST-2 dev")
    a.add_argument("--model", required=True)
    args = parser.parse_args()
    if args.what == "all":
        if not DATA.is_dir():
            raise SystemExit(f"skipped: {DATA} not found")
        build()
        measure()
    elif args.what == "build":
        build(args.only)
    elif args.what == "measure":
        measure()
    elif args.what == "report":
        report()
    elif args.what == "time":
        time_one(args)
    else:
        accuracy_one(args)


if __name__ == "__main__":
    main()
