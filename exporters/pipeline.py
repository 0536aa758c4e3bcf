"""``adamix-export --merge``: mixture checkpoint -> merged model -> verified, self-contained export folder.

Read `export_checkpoint` top to bottom: load (any supported checkpoint format), merge the experts and fold them
(`adamix_deploy.merge`), write the merged Hugging Face folder, export ONNX, optimise, write the reduced
precisions, check parity, write the manifest. Everything is built in a temporary folder and renamed into place
only after parity passes. The folder's format is `exporters.export_folder`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from adamix_deploy.checkpoint import MixtureCheckpoint
from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.checkpoint_format import CONFIG_NAME, WEIGHTS_NAME, CheckpointConfig
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import (
    MERGED_FOLDER,
    ONNX_FILES,
    QUANTIZED_PRECISIONS,
    Manifest,
    MixtureInfo,
    OnnxInfo,
    SourceInfo,
    sha256_folder,
    write_manifest,
)
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.exporters.merged_folder import save_merged_folder
from adamix_deploy.exporters.onnx_export import export_onnx
from adamix_deploy.exporters.optimize import convert_fp16, optimize_graph
from adamix_deploy.exporters.parity import check_classification, check_generation, parity_inputs
from adamix_deploy.exporters.quantize import quantize_model
from adamix_deploy.importers import detect_and_load
from adamix_deploy.merge import merge_mixture_model, parse_merge_method, routing_for
from adamix_deploy.mixture import set_routing
from adamix_deploy.routing_comparison import compare_routings

VALIDATION_EXAMPLES = 1000  # a seeded subset of a larger --verify-file keeps the export quick
REDUCED_PRECISIONS = {"onnx_int8", "onnx_int4", "onnx_fp16"}  # parity reports their agreement; fp32 must pass


def export_checkpoint(
    source: str | Path,
    output: str | Path,
    merge_method: str = "average",
    quantize: tuple[str, ...] = (),
    fp16: bool = False,
    opset: int = 18,
    verify_file: str | Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    base_model: str | None = None,
    greedy_steps: int = 16,
    parity_prompts: int = 4,
    lora_alpha: float | None = None,
    adapter_activation: str = "gelu",
) -> Manifest:
    """Merge, fold, export, optimise and verify; returns the manifest written into ``output``."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise AdamixError(f"{output} exists: pass --overwrite to replace it")
    unknown = [q for q in quantize if q not in QUANTIZED_PRECISIONS]
    if unknown:
        raise AdamixError(f"unknown quantisation {unknown[0]!r}: choose from {', '.join(QUANTIZED_PRECISIONS)}")
    merge_method = parse_merge_method(merge_method)
    started = time.perf_counter()
    ckpt = detect_and_load(Path(source), base_model, lora_alpha, adapter_activation)
    model, tokenizer, config = ckpt.model, ckpt.tokenizer, ckpt.config
    task = config.task
    if "int4" in quantize and task != "generation":
        raise AdamixError("--quantize int4 is for generation models; encoders take --quantize int8")
    set_routing(model, routing_for(merge_method))
    merged = merge_mixture_model(model, merge_method)
    samples = parity_inputs(task, verify_file, config, parity_prompts)

    with atomic_directory(output) as tmp:
        save_merged_folder(merged, tokenizer, tmp / MERGED_FOLDER)
        raw = tmp / ".raw"
        raw_onnx = export_onnx(merged, tokenizer, task, raw, opset)
        hf = merged.config
        shape = (hf.model_type, hf.num_attention_heads, hf.hidden_size)
        files = {"fp32": ONNX_FILES["fp32"]}
        fusions = optimize_graph(raw_onnx, tmp / files["fp32"], *shape)
        quantization = {}
        for precision in dict.fromkeys(quantize):
            files[precision] = ONNX_FILES[precision]
            quantization[precision] = quantize_model(tmp / files["fp32"], tmp / files[precision], precision, task)
        if fp16:
            files["fp16"] = ONNX_FILES["fp16"]
            convert_fp16(raw_onnx, tmp / files["fp16"], *shape)
        keep_export_files(raw, tmp)
        stages = {f"onnx_{precision}": tmp / name for precision, name in files.items()}
        if task in SEQUENCE_TASKS:
            max_length = config.max_length
            parity = check_classification(
                model, merged, tokenizer, stages, samples, REDUCED_PRECISIONS, tolerance, max_length
            )
        else:
            parity = check_generation(
                model, merged, tokenizer, stages, samples, REDUCED_PRECISIONS, tolerance, greedy_steps
            )
        # what the merge costs on the user's own validation file (parity only shows it is served faithfully)
        validation = compare_routings(ckpt, verify_file, max_examples=VALIDATION_EXAMPLES) if verify_file else None
        onnx = OnnxInfo(
            opset,
            onnxruntime_version(),
            files,
            fusions,
            with_past=task == "generation",
            quantization=quantization,
        )
        manifest = _manifest(ckpt, Path(source), merge_method, onnx, parity, started)
        return write_manifest(tmp, replace(manifest, validation=validation))


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def keep_export_files(raw: Path, folder: Path) -> None:
    """Move optimum's config, generation config and tokenizer files from its raw export into ``folder``, then
    drop the raw export (its ONNX files have been optimised into ``folder`` already)."""
    for item in raw.iterdir():
        if item.suffix != ".onnx" and not item.name.endswith(".onnx_data"):
            shutil.move(str(item), folder / item.name)
    shutil.rmtree(raw)


def mixture_info(config: CheckpointConfig) -> MixtureInfo:
    """The manifest's description of a checkpoint's mixture."""
    mixture = config.mixture
    return MixtureInfo(**{k: mixture[k] for k in ("method", "experts", "share", "rank", "alpha", "bottleneck")})


def _manifest(
    ckpt: MixtureCheckpoint, source: Path, merge_method: str, onnx: OnnxInfo, parity: dict, started: float
) -> Manifest:
    config = ckpt.config
    return Manifest(
        task=config.task,
        labels=config.labels,
        prompt_template=config.prompt_template,
        max_length=config.max_length,
        base_model=config.base_model,
        mixture=mixture_info(config),
        parameters=config.parameters,
        merge_method=merge_method,
        onnx=onnx,
        parity=parity,
        source=source_info(ckpt, source),
        export_seconds=round(time.perf_counter() - started, 1),
    )


def source_info(ckpt: MixtureCheckpoint, source: Path) -> SourceInfo:
    """Where an export came from, with a digest that recognises a re-export of the same checkpoint."""
    config = ckpt.config
    if source.is_file():  # an official AdaMix file: its own digest
        hashed_folder, hashed = source.parent, [source.name]
    else:
        hashed_folder = ckpt.folder
        hashed = [n for n in config.source_files or [CONFIG_NAME, WEIGHTS_NAME] if (ckpt.folder / n).is_file()]
    return SourceInfo(
        checkpoint=str(source.absolute()),
        format=config.source_format,
        sha256=sha256_folder(hashed_folder, hashed),
        files_hashed=hashed,
    )
