"""``adamix-export --merge``: mixture checkpoint -> merged model -> verified, self-contained export folder.

    deploy/x/
      model.onnx             fp32, onnxruntime transformer fusions applied (generation: with key/value cache)
      model_int8.onnx        --quantize int8 (dynamic, CPU)
      model_fp16.onnx        --fp16 (GPU)
      config.json, tokenizer files, generation_config.json
      adamix_manifest.json   source and sha256, merge method, task, labels, opset, onnxruntime version,
                             parity figures, file sizes
      merged/                merged PyTorch weights as a Hugging Face folder

Everything is built in a temporary folder and renamed into place only after parity passes.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from adamix_deploy.adapter import LinearWithAdapter
from adamix_deploy.atomic import atomic_directory
from adamix_deploy.batches import model_input_names
from adamix_deploy.checkpoint import CONFIG_NAME, WEIGHTS_NAME, MixtureCheckpoint
from adamix_deploy.data import group_references, read_classification, read_generation
from adamix_deploy.errors import AdamixError
from adamix_deploy.inject import set_submodule
from adamix_deploy.merge import merge_mixture_model, parse_merge_method
from adamix_deploy.mixture import set_routing
from exporters.manifest import sha256_folder, write_manifest
from exporters.onnx_export import export_onnx
from exporters.optimize import convert_fp16, optimize_graph, quantize_int8
from exporters.parity import (
    BUILTIN_PROMPTS,
    BUILTIN_SENTENCES,
    classification_parity,
    generation_parity,
    torch_greedy,
)
from serving.onnx_runtime import classify_logits, greedy_generate, open_session

ADAPTERS_NAME = "adamix_adapters.safetensors"


def routing_for(merge_method: str) -> str:
    """The unmerged routing a merge must reproduce: ``delta-average`` is the paired-expert ensemble."""
    return "ensemble" if merge_method == "delta-average" else merge_method


def save_merged_folder(merged: torch.nn.Module, tokenizer, folder: Path) -> None:
    """A Hugging Face folder of the merged model. LoRA merges are a stock architecture (plain transformers
    loads them); static adapters are stored beside the stock weights in ``adamix_adapters.safetensors``."""
    adapters = {n: m for n, m in merged.named_modules() if isinstance(m, LinearWithAdapter)}
    if adapters:
        stock = _without_adapters(merged, adapters)
        stock.save_pretrained(folder, safe_serialization=True)
        tensors = {
            f"{n}.{k}": v.contiguous() for n, m in adapters.items() for k, v in m.adapter.state_dict().items()
        }
        save_file(tensors, folder / ADAPTERS_NAME)
        layout = {
            n: {"activation": m.adapter.activation, "bottleneck": m.adapter.down.out_features}
            for n, m in adapters.items()
        }
        (folder / "adamix_adapters.json").write_text(json.dumps(layout, indent=1))
    else:
        merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _without_adapters(model: torch.nn.Module, adapters: dict) -> torch.nn.Module:
    stock = copy.deepcopy(model)
    for name, wrapper in adapters.items():
        set_submodule(stock, name, copy.deepcopy(wrapper.base))
    return stock


def export_checkpoint(
    source: str | Path,
    output: str | Path,
    merge_method: str = "average",
    quantize: str | None = None,
    fp16: bool = False,
    opset: int = 18,
    verify_file: str | Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    base_model: str | None = None,
    greedy_steps: int = 16,
    lora_alpha: float | None = None,
    adapter_activation: str = "gelu",
) -> dict:
    """Merge, fold, export, optimise and verify; returns the manifest."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise AdamixError(f"{output} exists: pass --overwrite to replace it")
    if quantize not in (None, "int8"):
        raise AdamixError(f"unknown quantisation {quantize!r}: only int8 is supported")
    merge_method = parse_merge_method(merge_method)
    started = time.perf_counter()
    ckpt = load_source(source, base_model, lora_alpha, adapter_activation)
    model, tokenizer, config = ckpt.model, ckpt.tokenizer, ckpt.config
    task = config["task"]
    set_routing(model, routing_for(merge_method))
    merged = merge_mixture_model(model, merge_method)
    samples = _samples(task, verify_file, config)

    with atomic_directory(output) as tmp:
        save_merged_folder(merged, tokenizer, tmp / "merged")
        raw = tmp / ".raw"
        export_onnx(merged, tokenizer, task, raw, opset)
        hf = merged.config
        shape = (hf.model_type, hf.num_attention_heads, hf.hidden_size)
        fusions = optimize_graph(raw / "model.onnx", tmp / "model.onnx", *shape)
        variants = {"onnx_fp32": tmp / "model.onnx"}
        if quantize == "int8":
            quantize_int8(tmp / "model.onnx", tmp / "model_int8.onnx")
            variants["onnx_int8"] = tmp / "model_int8.onnx"
        if fp16:
            convert_fp16(raw / "model.onnx", tmp / "model_fp16.onnx", *shape)
            variants["onnx_fp16"] = tmp / "model_fp16.onnx"
        for item in raw.iterdir():  # config, generation config and tokenizer files from optimum
            if item.suffix != ".onnx" and not item.name.endswith(".onnx_data"):
                shutil.move(str(item), tmp / item.name)
        shutil.rmtree(raw)
        reduced = {"onnx_int8", "onnx_fp16"}
        if task == "classification":
            parity = _classification_parity(
                model, merged, tokenizer, variants, samples, reduced, tolerance, config
            )
        else:
            parity = _generation_parity(
                model, merged, tokenizer, variants, samples, reduced, tolerance, greedy_steps
            )
        manifest = write_manifest(
            tmp, _manifest(ckpt, source, merge_method, opset, parity, fusions, started, quantize, fp16)
        )
    return manifest


def load_source(
    source: str | Path, base_model: str | None = None, lora_alpha: float | None = None, activation: str = "gelu"
) -> MixtureCheckpoint:
    """A mixture checkpoint, or a foreign format converted to one (PEFT LoRA folder, official AdaMix)."""
    from adamix_deploy.importers import detect_and_load

    return detect_and_load(Path(source), base_model, lora_alpha, activation)


def _samples(task: str, verify_file, config: dict) -> list:
    if task == "classification":
        if verify_file:
            examples = read_classification(verify_file, labels=config["labels"])[:32]
            return [(e.text, e.text_pair) for e in examples]
        return [(s, None) for s in BUILTIN_SENTENCES]
    prompts = (
        [p for p, _ in group_references(read_generation(verify_file))[:4]] if verify_file else BUILTIN_PROMPTS
    )
    return [(config.get("prompt_template") or "{prompt}\n").format(prompt=p) for p in prompts]


def _classification_parity(model, merged, tokenizer, variants, samples, reduced, tolerance, config) -> dict:
    texts = [t for t, _ in samples]
    pairs = [p for _, p in samples] if samples[0][1] is not None else None
    max_length = config.get("max_length", 128)
    pt = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    np_batch = {k: v.numpy() for k, v in pt.items()}
    accepted = model_input_names(model)
    pt = {k: v for k, v in pt.items() if k in accepted}

    def torch_stage(m):
        return lambda: m(**pt).logits.detach().float().numpy()

    stages = {"mixture_pytorch": torch_stage(model), "merged_pytorch": torch_stage(merged)}
    for name, path in variants.items():
        stages[name] = lambda path=path: classify_logits(open_session(path), np_batch)
    with torch.no_grad():
        return classification_parity(stages, reduced, tolerance)


def _generation_parity(model, merged, tokenizer, variants, prompts, reduced, tolerance, steps) -> dict:
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stages = {
        "mixture_pytorch": torch_greedy(model, eos, pad, steps),
        "merged_pytorch": torch_greedy(merged, eos, pad, steps),
    }
    for name, path in variants.items():
        session = open_session(path)
        stages[name] = lambda prompt, session=session: greedy_generate(session, prompt, steps, eos)
    return generation_parity(stages, ids, reduced, tolerance, steps)


def _manifest(ckpt, source, merge_method, opset, parity, fusions, started, quantize, fp16) -> dict:
    import onnxruntime

    config = ckpt.config
    source = Path(source)
    if Path(source).is_file():  # an official AdaMix file: its own digest
        hashed_folder, hashed = Path(source).parent, [Path(source).name]
    else:
        hashed_folder = ckpt.folder
        hashed = [
            n for n in config.get("source_files", [CONFIG_NAME, WEIGHTS_NAME]) if (ckpt.folder / n).is_file()
        ]
    return {
        "source": {
            "checkpoint": str(source.absolute()),
            "format": config.get("source_format", "adamix-mixture"),
            "sha256": sha256_folder(hashed_folder, hashed),
            "files_hashed": hashed,
        },
        "task": config["task"],
        "labels": config.get("labels"),
        "prompt_template": config.get("prompt_template"),
        "max_length": config.get("max_length"),
        "base_model": config["base_model"],
        "mixture": {
            k: config["mixture"][k] for k in ("method", "experts", "share", "rank", "alpha", "bottleneck")
        },
        "parameters": config.get("parameters"),
        "merge_method": merge_method,
        "onnx": {
            "opset": opset,
            "onnxruntime_version": onnxruntime.__version__,
            "models": {
                "fp32": "model.onnx",
                **({"int8": "model_int8.onnx"} if quantize else {}),
                **({"fp16": "model_fp16.onnx"} if fp16 else {}),
            },
            "fusions": fusions,
            "with_past": config["task"] == "generation",
        },
        "parity": parity,
        "export_seconds": round(time.perf_counter() - started, 1),
    }
