"""Adapter bases for the multi-adapter tests: tiny Llama LoRA adapters of different ranks on one base, each with
weights of its own, written in this process (the adapter base goes through PyTorch's exporter, no
subprocess)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adamix_deploy.config import MixtureSpec

from helpers.models import make_checkpoint

# name -> (rank, LoRA targets or None for the family's defaults). The first makes the base: with a layer beyond
# the defaults it takes LoRA on every layer, and the others leave most of them unadapted (zero in their slots)
LLAMA_ADAPTERS = {"gamma": (8, ("q_proj", "v_proj", "o_proj")), "alpha": (4, None), "beta": (2, None)}
PROMPTS = [[5, 9, 14, 3], [7, 2, 11, 4, 6, 8], [12, 5], [3, 3, 9, 10, 2]]


def reperturb(ckpt: Path, seed: int) -> None:
    """Give checkpoint ``ckpt`` LoRA weights of its own (seeded): `make_checkpoint` always seeds 0."""
    import torch
    from safetensors.torch import load_file, save_file

    file = ckpt / "mixture.safetensors"
    weights = load_file(file)
    generator = torch.Generator().manual_seed(seed)
    for name, value in weights.items():
        if "lora_" in name:
            weights[name] = value + 0.3 * torch.randn(value.shape, generator=generator)
    save_file(weights, file)


def lora_checkpoint(model: Path, folder: Path, rank: int, targets, seed: int) -> Path:
    spec = MixtureSpec("lora", experts=2, share="none", rank=rank, **({"targets": targets} if targets else {}))
    ckpt = make_checkpoint(model, "generation", spec, folder)
    reperturb(ckpt, seed)
    return ckpt


def llama_adapter_base(model: Path, root: Path, adapters: dict = LLAMA_ADAPTERS) -> dict[str, Path]:
    """``root/base`` with the ``adapters``, exported in order (each checked for parity on the base graph);
    returns each adapter's checkpoint."""
    from adamix_deploy.exporters.adapter_export import export_adapter

    checkpoints = {}
    for seed, (name, (rank, targets)) in enumerate(adapters.items(), start=1):
        checkpoints[name] = lora_checkpoint(model, root / f"{name}-ckpt", rank, targets, seed)
        export_adapter(checkpoints[name], root / "base", name=name, greedy_steps=4)
    return checkpoints


def greedy(logits_of, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens of a callable that maps token ids to the last position's logits (no cache: a reference)."""
    ids, out = list(prompt), []
    for _ in range(steps):
        token = int(np.argmax(logits_of(ids)))
        out.append(token)
        ids.append(token)
    return out
