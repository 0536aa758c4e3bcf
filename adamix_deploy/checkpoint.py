"""The mixture checkpoint with its weights: save it atomically, rebuild its model bit-exactly. The folder's
layout and its typed config are the contract in `adamix_deploy.contracts.checkpoint_format`; this module adds
the torch side (the weights file, the training state). No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.atomic import atomic_directory
from adamix_deploy.contracts.checkpoint_format import (
    FORMAT,
    STATE_JSON,
    STATE_TENSORS,
    WEIGHTS_NAME,
    CheckpointConfig,
    read_checkpoint_config,
    write_checkpoint_config,
)
from adamix_deploy.contracts.errors import AdamixError, CheckpointError
from adamix_deploy.contracts.export_folder import BaseModelInfo
from adamix_deploy.inject import count_parameters
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.packaged_models import PACKAGED_MODELS, resolve_model


@dataclass
class MixtureCheckpoint:
    model: torch.nn.Module
    tokenizer: object
    config: CheckpointConfig
    folder: Path


def checkpoint_config(
    model: torch.nn.Module,
    base_name: str,
    base_path: str | Path,
    task: str,
    labels: list[str] | None,
    spec: MixtureSpec,
    head: list[str],
    **fields,
) -> CheckpointConfig:
    """The config of a model `build_mixture_model` built (``spec`` as it returned it): the base model it was built
    on, the task, the mixture, the head and the parameter counts; ``fields`` sets the rest (``max_length``,
    ``prompt_template``, ``data_columns``, ``training``, ``source_format``, ``source_files``)."""
    trainable, total = count_parameters(model)
    return CheckpointConfig(
        base_model=BaseModelInfo(base_name, str(base_path), model.config.model_type, type(model).__name__),
        task=task,
        labels=labels,
        mixture=spec.to_dict(),
        head=head,
        parameters={"trainable": trainable, "total": total, "trainable_share": trainable / total},
        **fields,
    )


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: str | Path,
    config: CheckpointConfig,
    model: torch.nn.Module,
    tokenizer,
    training_state: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> None:
    """Write the checkpoint folder atomically (``training_state`` only for unfinished runs)."""
    with atomic_directory(folder) as tmp:
        save_file(trainable_weights(model), tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            tensors, state = training_state
            save_file(tensors, tmp / STATE_TENSORS)
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))
        write_checkpoint_config(tmp, config)  # last: its presence marks completeness


def base_model_path(config: CheckpointConfig, override: str | Path | None = None) -> Path:
    """Find the checkpoint's base model: an explicit override, its packaged name, or its recorded path."""
    base = config.base_model
    for candidate in (override, base.name if base.name in PACKAGED_MODELS else None, base.path):
        if candidate is None:
            continue
        try:
            return resolve_model(candidate)
        except AdamixError:
            if candidate is override:
                raise
    raise CheckpointError(f"base model {base.name!r} not found (looked at {base.path}); pass its folder")


def load_checkpoint(folder: str | Path, base_model: str | Path | None = None) -> MixtureCheckpoint:
    """Rebuild the mixture model of a checkpoint bit-exactly on its base model (in eval mode)."""
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    try:
        weights = load_file(folder / WEIGHTS_NAME)
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: cannot read ({e})") from None
    tokenizer = load_tokenizer(folder)
    spec = MixtureSpec.from_dict(config.mixture)
    model, _, _ = build_mixture_model(
        base_model_path(config, base_model), config.task, config.labels, spec, tokenizer, config.head
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
