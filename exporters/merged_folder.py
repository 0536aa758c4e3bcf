"""The merged model as a Hugging Face folder (``merged/`` in the export), for users who serve it with PyTorch.

LoRA merges are a stock architecture (plain transformers loads them). Static adapters are not: they are stored
beside the stock weights, in ``adamix_adapters.safetensors`` with their layout in ``adamix_adapters.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from adamix_deploy.adapter import LinearWithAdapter
from adamix_deploy.inject import set_submodule

ADAPTERS_NAME = "adamix_adapters.safetensors"
ADAPTERS_LAYOUT_NAME = "adamix_adapters.json"


def save_merged_folder(merged: torch.nn.Module, tokenizer, folder: Path) -> None:
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
        (folder / ADAPTERS_LAYOUT_NAME).write_text(json.dumps(layout, indent=1))
    else:
        merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _without_adapters(model: torch.nn.Module, adapters: dict) -> torch.nn.Module:
    stock = copy.deepcopy(model)
    for name, wrapper in adapters.items():
        set_submodule(stock, name, copy.deepcopy(wrapper.base))
    return stock
