"""Which int8 encoder agrees with fp32? Quantisation options for a merged MiniLM-L6 classifier, measured side by
side. Not a test: prints a table, writes JSON + PNG.

    python -m benchmarks.int8_encoders build EXPORT     # writes the variants under results/tmp/int8/
    python -m benchmarks.int8_encoders measure EXPORT   # agreement on SST-2 dev; speed, one process each
    python -m benchmarks.int8_encoders report           # the table (and docs/benchmarks/quantization.md), plot

EXPORT is an adamix-export folder of an SST-2 classifier (fp32 `model.onnx`, fused by the exporter; e.g.
results/tmp/cls-lora.onnx from `benchmarks.merged_exports build`).
- Agreement: argmax equal to fp32's on all 872 SST-2 dev sentences (batches of 64 padded to their longest);
  accuracy against the labels; max |Δlogit|.
- Choices made on data other than dev: calibration (static QDQ) and the per-node sensitivity (which nodes to
  keep fp32) use CALIBRATION sentences drawn with SEED from SST-2 `train.tsv`, never dev.
- Speed: batch 1 padded to 128 tokens (as `benchmarks.merged_exports`), 2 threads, each variant in its own
  process, one after the other, REPEATS calls after a warm-up, median; the ratio is fp32's median / the
  variant's, fp32 measured in the same run. Run on an otherwise idle machine.
Results: results/int8_encoder.json, int8_encoder.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import DATA, RESULTS
from benchmarks.common.plots import pyplot, save
from benchmarks.common.subprocesses import child

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORK = RESULTS / "tmp" / "int8"
SST2 = DATA / "glue" / "SST-2"
CALIBRATION, SEED, REPEATS, THREADS, EXCLUDE_TOP = 300, 20261201, 40, 2, (2, 4)


def _sentences(path: Path) -> tuple[list[str], list[str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    rows = [line.split("\t") for line in lines if line.strip()]
    return [r[0] for r in rows], [r[1] for r in rows]


def calibration_texts() -> list[str]:
    texts, _ = _sentences(SST2 / "train.tsv")
    return random.Random(SEED).sample(texts, CALIBRATION)


class Encoder:
    """The export's tokenizer as the server uses it, and batched logits of a session."""

    def __init__(self, export: Path):
        from adamix_deploy.serving.engine.model_folder import read_model_folder

        self.model = read_model_folder(export)

    def batches(self, texts: list[str], size: int = 64):
        from adamix_deploy.serving.engine.text import encode_for_classification, pad_batch

        m = self.model
        for start in range(0, len(texts), size):
            items = encode_for_classification(m.tokenizer, m.truncating_tokenizer, texts[start : start + size],
                                              m.max_tokens, True)  # fmt: skip
            yield pad_batch(items, m.pad_token_id)

    def logits(self, onnx_path: Path, texts: list[str]):
        import numpy as np

        from adamix_deploy.serving.engine.onnx_loops import classify_logits, open_session

        session = open_session(onnx_path, threads=THREADS)
        return np.concatenate([classify_logits(session, b) for b in self.batches(texts)])


def _dynamic(src: Path, dst: Path, per_channel=True, reduce_range=False, exclude=(), op_types=None) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, nodes_to_exclude=list(exclude), op_types_to_quantize=op_types,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip


def _static_qdq(src: Path, dst: Path, encoder: Encoder) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(list(encoder.batches(calibration_texts(), size=1)))

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    extra_options={"DefaultTensorType": 1})  # fmt: skip


def _nbits8(src: Path, dst: Path) -> None:
    import onnx

    from adamix_deploy.exporters.quantize import matmul_nbits_module

    nbits = matmul_nbits_module()
    q = nbits.MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                   algo_config=nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True,
                                                                                  accuracy_level=4, bits=8))  # fmt: skip
    q.process()
    onnx.save_model(q.model.model, str(dst))


def sensitivity(src: Path, encoder: Encoder) -> list[tuple[str, float]]:
    """Per quantisable node: the calibration agreement with fp32 when only that node stays fp32 (per-channel
    dynamic int8 elsewhere), best first."""
    import numpy as np
    import onnx

    texts = calibration_texts()
    reference = encoder.logits(src, texts).argmax(-1)
    nodes = [n.name for n in onnx.load(str(src)).graph.node
             if n.op_type in ("MatMul", "Attention", "EmbedLayerNormalization")]  # fmt: skip
    out = []
    for name in nodes:
        path = WORK / "sensitivity.onnx"
        _dynamic(src, path, exclude=[name])
        out.append((name, float(np.mean(encoder.logits(path, texts).argmax(-1) == reference))))
        print(f"  keep {name} fp32: calibration agreement {out[-1][1]:.4f}", flush=True)
    return sorted(out, key=lambda x: -x[1])


def build(export: Path) -> None:
    import logging

    logging.root.setLevel(logging.ERROR)
    WORK.mkdir(parents=True, exist_ok=True)
    src = export / "model.onnx"
    encoder = Encoder(export)
    variants = {
        "dynamic per-tensor": lambda d: _dynamic(src, d, per_channel=False),
        "dynamic per-channel (default)": lambda d: _dynamic(src, d),
        "dynamic per-channel + reduce_range": lambda d: _dynamic(src, d, reduce_range=True),
        "static QDQ per-channel, MatMul only": lambda d: _static_qdq(src, d, encoder),
        "MatMulNBits int8 block 32": lambda d: _nbits8(src, d),
    }
    ranked = sensitivity(src, encoder)
    for k in EXCLUDE_TOP:
        keep = [name for name, _ in ranked[:k]]
        variants[f"dynamic per-channel, {k} most sensitive nodes fp32"] = lambda d, keep=keep: _dynamic(
            src, d, exclude=keep
        )
    built = {"fp32": str(src)}
    for name, make in variants.items():
        dst = WORK / (
            name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("+", "plus")
            + ".onnx"
        )
        make(dst)
        built[name] = str(dst)
        print(f"built {name}", flush=True)
    (WORK / "variants.json").write_text(json.dumps({"built": built, "sensitivity": ranked}, indent=1))


def speed_one(path: str) -> None:
    import numpy as np

    from adamix_deploy.serving.engine.onnx_loops import classify_logits, open_session

    session = open_session(path, threads=THREADS)
    feed = {"input_ids": np.full((1, 128), 1000, dtype=np.int64), "attention_mask": np.ones((1, 128), dtype=np.int64),
            "token_type_ids": np.zeros((1, 128), dtype=np.int64)}  # fmt: skip
    for _ in range(5):
        classify_logits(session, feed)
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        classify_logits(session, feed)
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_ms": 1000 * statistics.median(times)}))


def measure(export: Path) -> None:
    import numpy as np

    built = json.loads((WORK / "variants.json").read_text())["built"]
    encoder = Encoder(export)
    texts, labels = _sentences(SST2 / "dev.tsv")
    label_index = {label: i for i, label in enumerate(encoder.model.labels)}
    gold = np.array([label_index[x] for x in labels])
    reference = encoder.logits(Path(built["fp32"]), texts)
    rows = []
    for name, path in built.items():
        logits = reference if name == "fp32" else encoder.logits(Path(path), texts)
        speed = child("benchmarks.int8_encoders", "speed-one", path, env={"OMP_NUM_THREADS": str(THREADS)})
        rows.append({
            "variant": name, "bytes": Path(path).stat().st_size,
            "agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
            "accuracy": float(np.mean(logits.argmax(-1) == gold)),
            "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
            "b1_ms": speed["median_ms"],
        })  # fmt: skip
        print(rows[-1], flush=True)
    base = rows[0]["b1_ms"]
    for row in rows:
        row["speedup"] = base / row["b1_ms"]
    (RESULTS / "int8_encoder.json").write_text(json.dumps({"sentences": len(texts), "rows": rows}, indent=1))
    report()


def report() -> None:
    data = json.loads((RESULTS / "int8_encoder.json").read_text())
    out = Markdown()
    out.table(
        [f"variant (SST-2 dev, {data['sentences']} sentences)", "MB", "agreement with fp32", "accuracy",
         "max \\|Δlogit\\|", "b1 ms", "speed-up"],
        [[r["variant"], f"{r['bytes'] / 1e6:.1f}", f"{100 * r['agreement']:.2f} %", f"{100 * r['accuracy']:.2f} %",
          f"{r['max_abs_logit_diff']:.3f}", f"{r['b1_ms']:.2f}", f"{r['speedup']:.2f}x"] for r in data["rows"]],
    )  # fmt: skip
    publish(out, "quantization.md", "int8-encoders")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in data["rows"]:
        ax.scatter(r["speedup"], 100 * r["agreement"])
        ax.annotate(r["variant"], (r["speedup"], 100 * r["agreement"]), fontsize=7)
    ax.axhline(99, color="grey", lw=0.8, ls="--")
    ax.axvline(1.6, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("batch-1 speed-up vs fp32 (seq 128, 2 threads)")
    ax.set_ylabel("prediction agreement with fp32, SST-2 dev (%)")
    save(fig, RESULTS / "int8_encoder.png", 120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["build", "measure", "speed-one", "report"])
    parser.add_argument("path", nargs="?", help="build, measure: the export folder; speed-one: an ONNX file")
    args = parser.parse_args()
    if args.phase == "speed-one":
        return speed_one(args.path)
    if args.phase == "report":
        return report()
    if not SST2.is_dir():
        raise SystemExit(f"skipped: {SST2} not found (the real data sets live in ../shared/data)")
    {"build": build, "measure": measure}[args.phase](Path(args.path))


if __name__ == "__main__":
    main()
