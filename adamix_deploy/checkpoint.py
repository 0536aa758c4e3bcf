"""The mixture checkpoint: a folder other tools can read.

    adamix_config.json    format, base model reference, task, labels, mixture spec, training summary
    mixture.safetensors   mixture and task-head weights only, never the frozen base
    tokenizer files       the tokenizer the model was trained with (special tokens included)
    training_state.*      optimizer, scheduler and RNG state of an unfinished run (for --resume)

No pickle anywhere. Every save replaces the folder atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adamix_deploy.atomic import atomic_directory
from adamix_deploy.config import MixtureSpec
from adamix_deploy.errors import AdamixError, CheckpointError
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.packaged_models import PACKAGED_MODELS, resolve_model

FORMAT = "adamix-mixture"
FORMAT_VERSION = 1
CONFIG_NAME = "adamix_config.json"
WEIGHTS_NAME = "mixture.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass
class MixtureCheckpoint:
    model: torch.nn.Module
    tokenizer: object
    config: dict
    folder: Path


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: str | Path,
    config: dict,
    model: torch.nn.Module,
    tokenizer,
    training_state: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> None:
    """Write the checkpoint folder atomically (``training_state`` only for unfinished runs)."""
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    with atomic_directory(folder) as tmp:
        save_file(trainable_weights(model), tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            tensors, state = training_state
            save_file(tensors, tmp / STATE_TENSORS)
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))  # last: its presence marks completeness


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a mixture checkpoint (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {config.get('format') if isinstance(config, dict) else None!r}"
        )
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {config['format_version']} is newer than this adamix-deploy reads ({FORMAT_VERSION})"
        )
    return config


def base_model_path(config: dict, override: str | Path | None = None) -> Path:
    """Find the checkpoint's base model: an explicit override, its packaged name, or its recorded path."""
    base = config["base_model"]
    for candidate in (override, base["name"] if base["name"] in PACKAGED_MODELS else None, base["path"]):
        if candidate is None:
            continue
        try:
            return resolve_model(candidate)
        except AdamixError:
            if candidate is override:
                raise
    raise CheckpointError(f"base model {base['name']!r} not found (looked at {base['path']}); pass its folder")


def load_checkpoint(folder: str | Path, base_model: str | Path | None = None) -> MixtureCheckpoint:
    """Rebuild the mixture model of a checkpoint bit-exactly on its base model (in eval mode)."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        weights = load_file(folder / WEIGHTS_NAME)
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: cannot read ({e})") from None
    tokenizer = load_tokenizer(folder)
    spec = MixtureSpec.from_dict(config["mixture"])
    model, _ = build_mixture_model(
        base_model_path(config, base_model),
        config["task"],
        config.get("labels"),
        spec,
        tokenizer,
        config["head"],
    )
    load_trainable_weights(model, weights, folder)
    model.eval()
    return MixtureCheckpoint(model, tokenizer, config, folder)


def load_trainable_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], origin: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{origin}: weights do not match the model (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    with torch.no_grad():
        for name, param in params.items():
            if weights[name].shape != param.shape:
                raise CheckpointError(
                    f"{origin}: {name} has shape {tuple(weights[name].shape)}, the model expects {tuple(param.shape)}"
                )
            param.copy_(weights[name])


def read_training_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file():
        return None
    return load_file(folder / STATE_TENSORS), json.loads((folder / STATE_JSON).read_text())
