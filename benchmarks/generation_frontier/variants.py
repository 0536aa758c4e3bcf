"""Which quantised copy of the model builder's fp32 decoder graph to serve: every variant of layer bits, LM-head
bits, block size and algorithm (`exporters.quantize.DecoderVariant`), built from the export's ``model.onnx``
with onnxruntime's quantiser, greedy-decoded on the frontier's test prompts. Not a test.

    python -m benchmarks.generation_frontier.variants build              # variants/<name>/ + build.json each
    python -m benchmarks.generation_frontier.variants quality [--quick]  # outputs per variant (resumable)
    python -m benchmarks.generation_frontier.variants bleu [--quick]     # a quick look: BLEU vs fp32 and sizes

- Variants (VARIANTS): fp32 is the export's own graph. ``int8-b32`` and ``int4-b32`` are what the builder's own
  ``-p int8`` / ``-p int4`` write (the same initializers, byte for byte, on a SmolLM2 export), so the builder's
  files are not decoded again. Each built variant's folder holds ``build.json``: its settings (the manifest's
  form), build seconds, file MB and weight MB per token, or the one-line reason it failed.
- Quality: greedy decoding of every test prompt (token ids, `data.prompts`) with
  `serving.engine.onnx_loops.greedy_generate` (token for token the server's engine), at most MAX_NEW_TOKENS
  new tokens, up to the export's eos; one line per variant in `data.QUALITY` (key ``ours:<variant>``): its
  outputs, seconds, file MB, MatMul weight MB read per token, settings, and the export's own parity figures
  against fp32 (`exporters.parity.generation_parity`: PARITY_PROMPTS prompts x PARITY_STEPS greedy steps,
  teacher-forced next-token agreement). ``--quick``: QUICK_PROMPTS prompts, results in results/tmp.
- Bytes per token, the speed proxy at batch 1: every MatMul / MatMulNBits weight (with its scales and zero
  points) is read once per token; the embedding Gather reads one row (2.3 KB for SmolLM2), left out. Seconds
  here are not speed figures: this benchmark runs beside other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from adamix_deploy.contracts.export_folder import EXTERNAL_DATA_SUFFIX, ONNX_FILES
from adamix_deploy.exporters.quantize import DecoderVariant
from benchmarks.common.trials import append_record, read_records
from benchmarks.generation_frontier import data

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS: dict[str, DecoderVariant | None] = {  # in the order quality decodes them
    "fp32": None,
    "int8-b32-head8": DecoderVariant(8, 8),
    "int4-b32-head8": DecoderVariant(4, 8),
    "int8-b32": DecoderVariant(8),  # bit-identical to the builder's -p int8 (LM head fp32)
    "int4-b32": DecoderVariant(4),  # bit-identical to the builder's -p int4
    "int4-b32-kquant-head8": DecoderVariant(4, 8, algorithm="k_quant", symmetric=False),
    "int4-b32-asym-head8": DecoderVariant(4, 8, symmetric=False),
    "int4-b64-head8": DecoderVariant(4, 8, 64),
    "int4-b128-head8": DecoderVariant(4, 8, 128),
    "int8-b128-head8": DecoderVariant(8, 8, 128),
    "int4-b128": DecoderVariant(4, None, 128),
    "int4-b32-hqq-head8": DecoderVariant(4, 8, algorithm="HQQ", symmetric=False),
}
# decoded on the --quick prompts only: 2 prompts took 87 s against 3-6 s for the RTN variants (HQQ's float zero
# points have no fast MatMulNBits kernel here), so 200 prompts would take hours
QUICK_ONLY = {"int4-b32-hqq-head8"}
VARIANTS_FOLDER = data.FRONTIER / "variants"
QUICK_RESULTS = VARIANTS_FOLDER / "quality-quick.jsonl"
BUILD_RECORD = "build.json"
QUICK_PROMPTS = 8
PARITY_PROMPTS, PARITY_STEPS = 8, 32  # the export's parity as the quantisation benchmark ran it


def variant_file(folder: Path, name: str) -> Path:
    return folder / name / ONNX_FILES[f"int{VARIANTS[name].layers_bits}"]


def model_file(export: Path, folder: Path, name: str) -> Path:
    """Where variant ``name``'s graph is: the export's own for fp32, else its folder."""
    return export / ONNX_FILES["fp32"] if VARIANTS[name] is None else variant_file(folder, name)


def model_paths(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + EXTERNAL_DATA_SUFFIX)]


def weight_mb_per_token(path: Path) -> float:
    """MB of MatMul / MatMulNBits weights (scales and zero points included) that one decoded token reads."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = {
        i.name: int(np.prod(i.dims)) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
        for i in model.graph.initializer
    }
    read = sum(
        sizes.get(name, 0)
        for node in model.graph.node
        if node.op_type in ("MatMul", "MatMulNBits")
        for name in node.input[1:]
    )
    return round(read / 1e6, 1)


# -- build -------------------------------------------------------------------------------------------------------
def build(export: Path, folder: Path) -> None:
    """Every variant not yet built; a failure is recorded in its build.json and the others go on."""
    from adamix_deploy.exporters.quantize import quantize_builder_decoder

    source = export / ONNX_FILES["fp32"]
    for name, variant in VARIANTS.items():
        if variant is None or (folder / name / BUILD_RECORD).exists():
            continue
        path = variant_file(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            settings = quantize_builder_decoder(source, path, variant)
            record = {"settings": settings, "file_mb": data.file_mb(model_paths(path)),
                      "weight_mb_per_token": weight_mb_per_token(path)}  # fmt: skip
        except Exception as e:  # the finding is the quantiser's own error, whatever its type
            record = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        record["build_seconds"] = round(time.perf_counter() - started, 1)
        (folder / name / BUILD_RECORD).write_text(json.dumps(record, indent=1))
        print(f"{name}: {record}", flush=True)


def build_record(export: Path, folder: Path, name: str) -> dict:
    """build.json of a built variant; for fp32, the export's own file."""
    if VARIANTS[name] is not None:
        path = folder / name / BUILD_RECORD
        return json.loads(path.read_text()) if path.exists() else {"error": "not built"}
    path = model_file(export, folder, name)
    return {"settings": {"precision": "fp32"}, "file_mb": data.file_mb(model_paths(path)),
            "weight_mb_per_token": weight_mb_per_token(path)}  # fmt: skip


# -- quality -----------------------------------------------------------------------------------------------------
def eos_id(export: Path) -> int | None:
    """The id that ends a sequence, as the server reads it from the export (generation_config, config,
    tokenizer); greedy_generate stops at one id."""
    from adamix_deploy.serving.engine.model_folder import read_model_folder

    eos = read_model_folder(export).eos_token_ids
    return min(eos) if eos else None


def quality(export: Path, folder: Path, prompts: list[list[int]], results: Path, quick: bool) -> None:
    """Greedy outputs of every variant not yet in ``results``, with parity against fp32 (QUICK_ONLY ones
    only when ``quick``)."""
    from adamix_deploy.exporters.parity import DecoderStage, generation_parity
    from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session, sequence_logits

    eos = eos_id(export)
    done = {row["key"] for row in read_records(results)}

    def stage(session) -> DecoderStage:
        return DecoderStage(
            greedy=lambda prompt: greedy_generate(session, prompt, PARITY_STEPS, eos)[0],
            logits=lambda sequence: sequence_logits(session, sequence),
        )

    reference = None
    for name in VARIANTS:
        key = f"ours:{name}"
        record = build_record(export, folder, name)
        if key in done or "error" in record or (name in QUICK_ONLY and not quick):
            print(f"{name}: {'done' if key in done else record.get('error', 'decoded with --quick only')}")
            continue
        session = open_session(model_file(export, folder, name), threads=data.THREADS)
        started = time.perf_counter()
        outputs = [greedy_generate(session, prompt, data.MAX_NEW_TOKENS, eos)[0] for prompt in prompts]
        seconds = round(time.perf_counter() - started, 1)
        parity = None
        if name != "fp32":
            reference = reference or open_session(export / ONNX_FILES["fp32"], threads=data.THREADS)
            stages = {"onnx_fp32": stage(reference), f"onnx_{name}": stage(session)}
            report = generation_parity(stages, prompts[:PARITY_PROMPTS], set(stages), 0.0, PARITY_STEPS)
            parity = {"prompts": report["prompts"], "steps_compared": report["steps_compared"],
                      **report["stages"][f"onnx_{name}"]}  # fmt: skip
        row = {"key": key, "backend": "ours", "precision": name, "file_mb": record["file_mb"],
               "weight_mb_per_token": record["weight_mb_per_token"], "outputs": outputs, "seconds": seconds,
               "settings": record["settings"], "build_seconds": record.get("build_seconds"), "parity": parity,
               "eos": eos, "max_new_tokens": data.MAX_NEW_TOKENS, "threads": data.THREADS}  # fmt: skip
        append_record(results, row)
        agreement = parity and parity["next_token_agreement"]
        print(f"{name}: {len(outputs)} prompts in {seconds} s, next-token agreement {agreement}", flush=True)


# -- a quick look at BLEU ----------------------------------------------------------------------------------------
def texts(export: Path, outputs: list[list[int]]) -> list[str]:
    """Token ids to text as the quantisation benchmark decodes them (special tokens dropped, stripped)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]


def bleu(export: Path, results: Path, references: list[list[str]]) -> list[dict]:
    """BLEU of every variant in ``results`` and its difference to fp32 with the paired bootstrap interval."""
    from adamix_deploy.evaluation import generation_scores
    from benchmarks.decoder_quantization import paired_bootstrap

    rows = {row["precision"]: row for row in read_records(results) if row["backend"] == "ours"}
    if "fp32" not in rows:
        raise SystemExit(f"{results}: no fp32 row yet")
    refs = references[: len(rows["fp32"]["outputs"])]
    fp32 = texts(export, rows["fp32"]["outputs"])
    table = []
    for name, row in rows.items():
        predictions = texts(export, row["outputs"])
        scores = generation_scores(predictions, refs)
        delta = paired_bootstrap(predictions, fp32, refs) if name != "fp32" else (0.0, 0.0, 0.0)
        parity = row.get("parity") or {}
        table.append({"variant": name, "file_mb": row["file_mb"], "weight_mb_per_token": row["weight_mb_per_token"],
                      "bleu": round(scores["bleu"], 2), "rouge_l": round(scores["rouge_l"], 2),
                      "bleu_vs_fp32": [round(x, 2) for x in delta],
                      "next_token_agreement": parity.get("next_token_agreement"),
                      "greedy_identical": parity.get("greedy_tokens_identical"),
                      "build_seconds": row.get("build_seconds"), "decode_seconds": row["seconds"]})  # fmt: skip
    print("| variant | MB | weight MB/token | BLEU | BLEU vs fp32 (95 %) | next-token agreement | build s |")
    print("|---|---|---|---|---|---|---|")
    for t in table:
        d, agreement = t["bleu_vs_fp32"], t["next_token_agreement"]
        print(f"| {t['variant']} | {t['file_mb']} | {t['weight_mb_per_token']} | {t['bleu']} | "
              f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] | {'-' if agreement is None else f'{agreement:.3f}'} | "
              f"{t['build_seconds'] or '-'} |")  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "quality", "bleu"])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PROMPTS} prompts, results in results/tmp")
    args = parser.parse_args()
    results = QUICK_RESULTS if args.quick else data.QUALITY
    if args.command == "build":
        build(data.EXPORT, VARIANTS_FOLDER)
    elif args.command == "quality":
        prompts = data.prompts()
        quality(
            data.EXPORT, VARIANTS_FOLDER, prompts[:QUICK_PROMPTS] if args.quick else prompts, results, args.quick
        )
    else:
        bleu(data.EXPORT, results, data.references())


if __name__ == "__main__":
    main()
