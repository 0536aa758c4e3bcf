"""What an unfinished run saves beside its checkpoint for ``--resume``: optimizer, scheduler and RNG state,
and with ``--select-best`` the best weights so far.

safetensors holds only flat tensors, so the state is split into tensors (``training_state.safetensors``) and a
JSON skeleton (``training_state.json``); `restore_training_state` puts them back together. A resumed run ends
with the same weights as an uninterrupted one (tests/training/test_checkpoint.py; on a GPU up to the order of
floating-point sums).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from adamix_deploy.checkpoint import load_trainable_weights
from adamix_deploy.contracts.checkpoint_format import WEIGHTS_NAME

BEST_PREFIX = "best."  # the best weights so far, beside the optimizer's tensors


def capture_training_state(
    optimizer, scheduler, progress: dict, rng_state: torch.Tensor | None = None, best_weights: dict | None = None
) -> tuple[dict, dict]:
    """Optimizer, scheduler and RNG state as (tensors, JSON): safetensors cannot hold nested structures.
    ``progress``: the loop's JSON record (step, history, elapsed, evaluations, selection). ``rng_state``: torch's
    global generator by default; under torchrun the routing state that every rank shares (`distributed.py`),
    which a resumed run restores into the global generator before sharing it again. On a GPU also the current
    device's generator (dropout draws there): a resumed GPU run continues its dropout stream instead of restarting
    it from the seed. ``best_weights``: the trainable weights ``--select-best`` keeps so far."""
    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state() if rng_state is None else rng_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update({f"{BEST_PREFIX}{name}": value for name, value in (best_weights or {}).items()})
    skeleton = {}
    for pid, slots in opt["state"].items():
        skeleton[str(pid)] = {}
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
                skeleton[str(pid)][key] = None
            else:
                skeleton[str(pid)][key] = value
    state = {
        **progress,
        "optimizer_state": skeleton,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
    }
    return tensors, json.loads(json.dumps(state))


def restore_training_state(
    model, optimizer, scheduler, state: tuple[dict, dict], output: Path
) -> tuple[dict, dict | None]:
    """Put a saved run back; returns its progress record (what `capture_training_state` was given) and the
    best weights kept so far (None without ``--select-best``)."""
    tensors, info = state
    load_trainable_weights(model, load_file(output / WEIGHTS_NAME), output)
    opt_state = {
        int(pid): {k: tensors[f"optimizer.{pid}.{k}"] if v is None else v for k, v in slots.items()}
        for pid, slots in info["optimizer_state"].items()
    }
    optimizer.load_state_dict({"state": opt_state, "param_groups": info["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    best = {k[len(BEST_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BEST_PREFIX)}
    progress = {k: v for k, v in info.items() if k not in ("optimizer_state", "param_groups", "scheduler")}
    return progress, best or None
