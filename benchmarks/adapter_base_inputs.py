"""What LoRA inputs on every layer of a base cost (issue 22, item 3). Not a test: prints a table, writes JSON.

    python benchmarks/adapter_base_inputs.py [--rounds 30] [--threads 1]

A base for onnxruntime adapters takes LoRA either on its family's default LoRA layers (``lora_layers="default"``,
MiniLM-L6: query and value, 12 layers; for a checkpoint of the default recipe that is also what a base took
before issue 22, the layers of its first checkpoint) or on every linear layer (``"all"``: 6 per encoder layer,
36), each with an empty (rank 0) default. Both bases are made here by `export_adapter` from one MiniLM checkpoint
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CALLS = 5


def checkpoint(folder: Path) -> Path:
    import torch

    from adamix_deploy.checkpoint import save_checkpoint
    from adamix_deploy.config import MixtureSpec
    from adamix_deploy.inject import count_parameters
    from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
    from adamix_deploy.packaged_models import resolve_model

    path = Path(resolve_model("minilm"))
    spec = MixtureSpec("lora", experts=4, share="up", rank=8, alpha=16.0, init="official")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    model, head = build_mixture_model(path, "classification", ["negative", "positive"], spec, tokenizer,
                                      train_pooler=True)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    trainable, total = count_parameters(model)
    config = {
        "base_model": {"name": "minilm", "path": str(path), "model_type": model.config.model_type,
                       "architecture": type(model).__name__},
        "task": "classification", "labels": ["negative", "positive"], "max_length": 128, "prompt_template": None,
        "mixture": spec.to_dict(), "head": head,
        "parameters": {"trainable": trainable, "total": total, "trainable_share": trainable / total},
        "training": {"complete": True},
    }  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = bases(checkpoint(work / "ckpt"), work)
        inputs = {name: len(json.loads((f / "adamix_manifest.json").read_text())["adapter_base"]["inputs"])
                  for name, f in folders.items()}  # fmt: skip
        medians = measure(folders, args.rounds, args.threads)
    import onnxruntime

    result = {"rounds": args.rounds, "calls_per_round": CALLS, "threads": args.threads, "inputs": inputs,
              "onnxruntime": onnxruntime.__version__, "median_ms": medians}  # fmt: skip
    (RESULTS / "adapter_base_inputs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'shape':<15}{'adapter':<9}{'default layers ms':>18}{'every layer ms':>16}{'cost':>8}")
    for shape in ("batch 1 x 16", "batch 1 x 128", "batch 8 x 128"):
        for active in ("none", "active"):
            old = medians[f"default layers | {active} | {shape}"]
            new = medians[f"every layer | {active} | {shape}"]
            print(f"{shape:<15}{active:<9}{old:>18.2f}{new:>16.2f}{100 * (new / old - 1):>+7.1f}%")


if __name__ == "__main__":
    main()
