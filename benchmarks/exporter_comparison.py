"""Does the exporter change cost anything? The same merged checkpoints exported by optimum (transformers 4.57, the
previous stack) and by today's exporters (PyTorch's for the MiniLM-L6 classifier, onnxruntime-genai's model builder
for the SmolLM2-135M decoder), timed side by side by the same loops on the same machine.

    python -m benchmarks.merged_exports build --only cls-head cls-lora gen-lora  # today's exports in results/tmp/
    python -m benchmarks.exporter_comparison measure --baseline DIR   # DIR: optimum's cls-lora.onnx, gen-lora.onnx
    python -m benchmarks.exporter_comparison report

The baseline folders are what `python -m benchmarks.merged_exports build --only cls-lora gen-lora` wrote on the
previous stack (pyproject pinning transformers 4.57 and optimum-onnx 0.1.0), kept outside the repository; both
sides merge the same trained checkpoints. Cases, each timed in its own process by `merged_exports time` (the
server's numpy loops: `classify_logits`, `greedy_generate`), ROUNDS rounds in alternation, 2 threads; a figure is
the median over the rounds of each process's median:
- classifier fp32 / int8, batch 1 and 8, 128 tokens: optimum's graph vs torch.onnx's, and the head-only (base)
  export for the merged/base ratio;
- decoder fp32 / int8 / int4, batch 1: tokens/s over 32 greedy tokens after a warm-up, and the first token's
  time (a 1-token decode: the prompt's forward pass), plus each graph's node count.
Run it alone on the machine. Results: results/exporter_comparison.json, exporter_comparison.png, and the tables
in docs/benchmarks/export.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS, WORK
from benchmarks.common.plots import pyplot, save
from benchmarks.common.subprocesses import child

ROUNDS = 5
RESULT = RESULTS / "exporter_comparison.json"
TIMER = "benchmarks.merged_exports"


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def classifier_cases(baseline: Path) -> list[tuple[str, Path, str]]:
    return [
        ("optimum fp32", baseline / "cls-lora.onnx", "model.onnx"),
        ("torch.onnx fp32", WORK / "cls-lora.onnx", "model.onnx"),
        ("torch.onnx fp32, head only (base)", WORK / "cls-head.onnx", "model.onnx"),
        ("optimum int8", baseline / "cls-lora.onnx", "model_int8.onnx"),
        ("torch.onnx int8", WORK / "cls-lora.onnx", "model_int8.onnx"),
    ]


def decoder_cases(baseline: Path) -> list[tuple[str, Path, str]]:
    return [
        (f"{tool} {precision}", folder, file)
        for precision, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx"), ("int4", "model_int4.onnx"))
        for tool, folder in (("optimum", baseline / "gen-lora.onnx"), ("genai builder", WORK / "gen-lora.onnx"))
    ]


def measure(baseline: Path) -> None:
    classifiers, decoders = classifier_cases(baseline), decoder_cases(baseline)
    runs: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for batch in (1, 8):
            for label, folder, file in classifiers:
                out = child(TIMER, "time", "--backend", "onnx", "--model", folder, "--file", file,
                            "--batch", batch, "--repeats", 30 if batch == 1 else 15)  # fmt: skip
                runs.setdefault(f"{label} | b{batch}", []).append(out["median_ms"])
        for label, folder, file in decoders:
            for tokens, repeats in ((32, 5), (1, 10)):
                out = child(TIMER, "time", "--backend", "onnx", "--model", folder, "--file", file, "--task",
                            "generation", "--tokens", tokens, "--repeats", repeats, "--warmup", 1)  # fmt: skip
                runs.setdefault(f"{label} | {tokens} tokens", []).append(out["median_ms"])
    nodes = {f"classifier {label}": node_count(folder / file) for label, folder, file in classifiers}
    nodes |= {f"decoder {label}": node_count(folder / file) for label, folder, file in decoders}
    RESULT.write_text(
        json.dumps(
            {"rounds": ROUNDS, "threads": 2, "runs_ms": runs, "nodes": nodes, "baseline": str(baseline)}, indent=1
        )
    )
    report()


def report(write: bool = True) -> None:
    result = json.loads(RESULT.read_text())
    ms = {key: statistics.median(values) for key, values in result["runs_ms"].items()}
    nodes = result["nodes"]
    md = Markdown()
    md(f"MiniLM-L6 merged-LoRA classifier, 128 tokens, median ms over {result['rounds']} rounds (2 threads):")
    md()
    rows = []
    for precision in ("fp32", "int8"):
        for batch in (1, 8):
            old, new = ms[f"optimum {precision} | b{batch}"], ms[f"torch.onnx {precision} | b{batch}"]
            rows.append([precision, batch, f"{old:.2f}", f"{new:.2f}", f"{new / old:.3f}",
                         nodes[f"classifier optimum {precision}"], nodes[f"classifier torch.onnx {precision}"]])  # fmt: skip
    md.table(
        ["precision", "batch", "optimum ms", "torch.onnx ms", "torch/optimum", "nodes optimum", "nodes torch"],
        rows,
    )
    md()
    base = [ms[f"torch.onnx fp32, head only (base) | b{b}"] for b in (1, 8)]
    merged = [ms[f"torch.onnx fp32 | b{b}"] for b in (1, 8)]
    md(f"Merged-LoRA / base (head-only) export, torch.onnx fp32: batch 1 {merged[0] / base[0]:.3f}, "
       f"batch 8 {merged[1] / base[1]:.3f}.")  # fmt: skip
    md()
    md("SmolLM2-135M merged AdaMix-LoRA decoder, batch 1, our greedy loop (2 threads):")
    md()
    rows = []
    for precision in ("fp32", "int8", "int4"):
        old_label, new_label = f"optimum {precision}", f"genai builder {precision}"
        tps = [32 / (ms[f"{label} | 32 tokens"] / 1000) for label in (old_label, new_label)]
        first = [ms[f"{label} | 1 tokens"] for label in (old_label, new_label)]
        rows.append([precision, f"{tps[0]:.1f}", f"{tps[1]:.1f}", f"{tps[1] / tps[0]:.2f}", f"{first[0]:.1f}",
                     f"{first[1]:.1f}", nodes[f"decoder {old_label}"], nodes[f"decoder {new_label}"]])  # fmt: skip
    md.table(["precision", "optimum tokens/s", "builder tokens/s", "builder/optimum", "optimum first token ms",
              "builder first token ms", "nodes optimum", "nodes builder"], rows)  # fmt: skip
    publish(md, "export.md", "exporter-comparison", write)
    plot(ms)


def plot(ms: dict[str, float]) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for offset, (tool, color) in enumerate((("optimum", "tab:gray"), ("torch.onnx", "tab:blue"))):
        values = [ms[f"{tool} {p} | b{b}"] for p in ("fp32", "int8") for b in (1, 8)]
        left.bar([i + 0.4 * offset for i in range(4)], values, width=0.4, color=color, label=tool)
    left.set_xticks([i + 0.2 for i in range(4)], ["fp32 b1", "fp32 b8", "int8 b1", "int8 b8"])
    left.set_ylabel("ms per batch (lower is better)")
    left.set_title("MiniLM-L6 classifier")
    left.legend()
    for offset, (tool, color) in enumerate((("optimum", "tab:gray"), ("genai builder", "tab:green"))):
        values = [32 / (ms[f"{tool} {p} | 32 tokens"] / 1000) for p in ("fp32", "int8", "int4")]
        right.bar([i + 0.4 * offset for i in range(3)], values, width=0.4, color=color, label=tool)
    right.set_xticks([i + 0.2 for i in range(3)], ["fp32", "int8", "int4"])
    right.set_ylabel("tokens/s, batch 1 (higher is better)")
    right.set_title("SmolLM2-135M decoder")
    right.legend()
    save(fig, RESULTS / "exporter_comparison.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("measure").add_argument("--baseline", type=Path, required=True)
    sub.add_parser("report")
    args = parser.parse_args()
    if args.step == "measure":
        measure(args.baseline)
    else:
        report()


if __name__ == "__main__":
    main()
