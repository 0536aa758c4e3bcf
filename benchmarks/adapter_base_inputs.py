"""What LoRA inputs on every layer of an adapter base cost. Not a test: prints a table, writes JSON and the
tables of docs/benchmarks/adapters.md.

    python -m benchmarks.adapter_base_inputs measure [--rounds 30] [--threads 1]   # then report
    python -m benchmarks.adapter_base_inputs report

A base for onnxruntime adapters takes LoRA either on its family's default LoRA layers (``lora_layers="default"``,
MiniLM-L6: query and value, 12 layers: what a base made from a default-recipe checkpoint takes) or on every
linear layer (``"all"``, `adamix-export --adapter-layers all`: 6 per encoder layer, 36), each with an empty
(rank 0) default. Both bases are made here by `export_adapter` from one MiniLM checkpoint
of the default recipe (nlu-lora: LoRA r 8 on query/value, 4 experts, B shared, pooler trained; seeded random
weights: the cost depends on shapes only). Each graph runs with no adapter active and with that checkpoint's
adapter active (the same file feeds both: its inputs are in both graphs), at batch 1 and 8 padded to 128 tokens,
and batch 1 at 16 tokens (where fixed per-node costs weigh most). All sessions live in one process and run in
alternation: each round runs every case CALLS times, in an order rotated each round; the figure is the median
over all rounds' calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULT = RESULTS / "adapter_base_inputs.json"
CALLS = 5
SHAPES = ("batch 1 x 16", "batch 1 x 128", "batch 8 x 128")


def checkpoint(folder: Path) -> Path:
    import torch

    from adamix_deploy.checkpoint import checkpoint_config, save_checkpoint
    from adamix_deploy.config import MixtureSpec
    from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
    from adamix_deploy.packaged_models import resolve_model

    path = Path(resolve_model("minilm"))
    spec = MixtureSpec("lora", experts=4, share="up", rank=8, alpha=16.0, init="official")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    labels = ["negative", "positive"]
    model, head, spec = build_mixture_model(path, "classification", labels, spec, tokenizer, train_pooler=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    config = checkpoint_config(model, "minilm", path, "classification", labels, spec, head,
                               training={"complete": True})  # fmt: skip
    save_checkpoint(folder, config, model, tokenizer)
    return folder


def bases(ckpt: Path, work: Path) -> dict[str, Path]:
    """The base with LoRA on the default layers, and on every layer."""
    from adamix_deploy.exporters.adapter_export import export_adapter

    export_adapter(ckpt, work / "default", name="ours")
    export_adapter(ckpt, work / "every-layer", name="ours", lora_layers="all")
    return {"default layers": work / "default", "every layer": work / "every-layer"}


def measure(folders: dict[str, Path], rounds: int, threads: int) -> dict[str, float]:
    import numpy as np
    from tokenizers import Tokenizer

    from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, classify_logits, open_session

    adapter = ActiveAdapter(folders["every layer"] / "adapters" / "ours" / "adapter.onnx_adapter")
    sessions = {name: open_session(folder / "model.onnx", threads=threads) for name, folder in folders.items()}
    tokenizer = Tokenizer.from_file(str(folders["every layer"] / "tokenizer.json"))

    def batch(size: int, tokens: int) -> dict:
        tokenizer.enable_truncation(tokens)
        tokenizer.enable_padding(length=tokens)
        encoded = tokenizer.encode_batch(["a gripping, funny and quietly devastating film " * 12] * size)
        return {k: np.array([getattr(e, a) for e in encoded]) for k, a in
                (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}  # fmt: skip

    shapes = {"batch 1 x 128": batch(1, 128), "batch 8 x 128": batch(8, 128), "batch 1 x 16": batch(1, 16)}
    cases = [(base, active, shape) for shape in shapes for base in sessions for active in ("none", "active")]
    # the adapter's logits are the same on both graphs; without one, both return no logits
    for inputs in shapes.values():
        outs = [classify_logits(s, inputs, adapter.run_options) for s in sessions.values()]
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    for round_ in range(rounds + 1):
        shift = round_ % len(cases)
        for base, active, shape in cases[shift:] + cases[:shift]:
            session, options = sessions[base], adapter.run_options if active == "active" else None
            for _ in range(CALLS):
                start = time.perf_counter()
                classify_logits(session, shapes[shape], options)
                if round_:  # round 0 warms up
                    times[(base, active, shape)].append(1000 * (time.perf_counter() - start))
        print(f"round {round_}/{rounds}", file=sys.stderr, flush=True)
    return {" | ".join(case): statistics.median(t) for case, t in times.items()}


def measure_main(rounds: int, threads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = bases(checkpoint(work / "ckpt"), work)
        inputs = {name: len(json.loads((f / "adamix_manifest.json").read_text())["adapter_base"]["inputs"])
                  for name, f in folders.items()}  # fmt: skip
        medians = measure(folders, rounds, threads)
    import onnxruntime

    result = {"rounds": rounds, "calls_per_round": CALLS, "threads": threads, "inputs": inputs,
              "onnxruntime": onnxruntime.__version__, "median_ms": medians}  # fmt: skip
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


def report(write: bool = True) -> None:
    result = json.loads(RESULT.read_text())
    medians = result["median_ms"]
    md = Markdown()
    md(f"MiniLM-L6, onnxruntime {result['onnxruntime']}, {result['threads']} thread(s); median ms over "
       f"{result['rounds']} rounds x {result['calls_per_round']} calls, all cases alternating in one process; "
       f"graph inputs: {', '.join(f'{k} {v}' for k, v in result['inputs'].items())}.")  # fmt: skip
    md()
    rows = []
    for shape in SHAPES:
        for active in ("none", "active"):
            default = medians[f"default layers | {active} | {shape}"]
            every = medians[f"every layer | {active} | {shape}"]
            rows.append((shape, active, f"{default:.2f}", f"{every:.2f}", f"{100 * (every / default - 1):+.1f} %"))
    md.table(("shape", "adapter", "default layers (ms)", "every layer (ms)", "cost"), rows)
    publish(md, "adapters.md", "base-inputs", write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    measure_parser = sub.add_parser("measure", help="build both bases from one MiniLM checkpoint, time them")
    measure_parser.add_argument("--rounds", type=int, default=30)
    measure_parser.add_argument("--threads", type=int, default=1)
    report_parser = sub.add_parser("report", help="print the table and write it into docs/benchmarks/adapters.md")
    report_parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.step == "measure":
        measure_main(args.rounds, args.threads)
    report(write=args.step == "measure" or not args.no_write)


if __name__ == "__main__":
    main()
