"""Merge the experts and fold them into the base model: pure functions, weights in, weights out.

Merge methods:

- ``average`` (default, the AdaMix merge): each side's experts are averaged. For LoRA this gives
  mean(B) · mean(A), the reference behaviour; for adapters, mean(down) and mean(up).
- ``delta-average`` (LoRA only): mean_i(B_i · A_i), the exact average of the experts' weight updates.
  It differs from ``average`` whenever both sides have several experts, since mean(B)·mean(A) also mixes
  B_i with A_j; with a shared side (one B or one A) the two coincide. An adapter has a nonlinearity
  between its sides, so it has no exact "delta": only ``average`` and ``expert:i`` apply.
- ``expert:i``: keep expert i alone (on every side that is not shared).

Folding: LoRA's merged update enters the base weight, W <- W + (alpha / r) · ΔW (for GPT-2's Conv1D, whose
weight is stored (in, out), ΔWᵀ): a stock layer, zero added latency. An adapter cannot enter W, so the
averaged adapter stays in the graph as one static bottleneck per position: one adapter's FLOPs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from adamix_deploy.adapter import LinearWithAdapter, MixtureAdapter
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.inject import set_submodule
from adamix_deploy.lora import MixtureLoRALinear
from adamix_deploy.routing import Routing

MERGE_METHODS = ("average", "delta-average", "expert:i")


def parse_merge_method(text: str) -> str:
    if text in ("average", "delta-average"):
        return text
    if text.startswith("expert:"):
        Routing.parse(text)  # validates the index syntax
        return text
    raise AdamixError(f"unknown merge method {text!r}: choose average, delta-average or expert:<index>")


def routing_for(merge_method: str) -> str:
    """The unmerged routing a merge must reproduce: ``delta-average`` is the paired-expert ensemble."""
    return "ensemble" if merge_method == "delta-average" else merge_method


def _expert(stack: torch.Tensor, index: int) -> torch.Tensor:
    """Expert ``index`` of one side; a shared side (one module) serves every index."""
    if stack.shape[0] == 1:
        return stack[0]
    if index >= stack.shape[0]:
        raise AdamixError(f"expert:{index} does not exist: this mixture has {stack.shape[0]}")
    return stack[index]


def merged_lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, method: str) -> torch.Tensor:
    """ΔW (out x in, before scaling) of stacked experts A (n_a, r, in) and B (n_b, out, r)."""
    if method == "average":
        return lora_B.mean(0) @ lora_A.mean(0)
    if method == "delta-average":
        experts = max(lora_A.shape[0], lora_B.shape[0])
        return torch.stack([_expert(lora_B, i) @ _expert(lora_A, i) for i in range(experts)]).mean(0)
    index = Routing.parse(method).expert
    return _expert(lora_B, index) @ _expert(lora_A, index)


def merged_lora_factors(
    lora_A: torch.Tensor, lora_B: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merge as one LoRA pair (A (r' x in), B (out x r')) with B @ A == `merged_lora_delta`: what an ONNX
    Runtime adapter file carries instead of a folded weight. ``average`` and ``expert:i`` keep rank r;
    ``delta-average`` of two multi-expert sides is exact only at rank M·r (the experts' pairs side by side)."""
    if method == "delta-average" and lora_A.shape[0] > 1 and lora_B.shape[0] > 1:
        experts = max(lora_A.shape[0], lora_B.shape[0])
        a = torch.cat([_expert(lora_A, i) for i in range(experts)], dim=0)
        b = torch.cat([_expert(lora_B, i) for i in range(experts)], dim=1) / experts
        return a, b
    if method in ("average", "delta-average"):  # with a shared side, delta-average equals average
        return lora_A.mean(0), lora_B.mean(0)
    index = Routing.parse(method).expert
    return _expert(lora_A, index), _expert(lora_B, index)


def fold_lora_into_linear(base: nn.Module, delta: torch.Tensor, scaling: float) -> nn.Module:
    """A copy of ``base`` (nn.Linear or Conv1D) with W + scaling · ΔW; ``base`` itself is untouched."""
    folded = copy.deepcopy(base)
    with torch.no_grad():
        update = scaling * delta.to(folded.weight.dtype)
        folded.weight += update.T if isinstance(folded, Conv1D) else update
    folded.weight.requires_grad_(False)
    return folded


class BottleneckAdapter(nn.Module):
    """The merged adapter: one static ``h + up(act(down(h)))``, exactly one adapter's FLOPs."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.activation = activation
        self.act = ACT2FN[activation]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


def collapse_adapter(adapter: MixtureAdapter, method: str) -> BottleneckAdapter:
    """The mixture's experts as one static adapter (``average`` or ``expert:i``)."""
    if method == "delta-average":
        raise AdamixError("delta-average applies to LoRA only: an adapter's experts can only be averaged")
    merged = BottleneckAdapter(adapter.hidden_size, adapter.bottleneck, adapter.activation)
    pick = (lambda s: s.mean(0)) if method == "average" else (lambda s: _expert(s, Routing.parse(method).expert))
    with torch.no_grad():
        merged.down.weight.copy_(pick(adapter.down_weight))
        merged.down.bias.copy_(pick(adapter.down_bias))
        merged.up.weight.copy_(pick(adapter.up_weight))
        merged.up.bias.copy_(pick(adapter.up_bias))
    return merged.to(adapter.down_weight.dtype)


def merge_mixture_model(model: nn.Module, method: str = "average") -> nn.Module:
    """A copy of ``model`` with every mixture module merged: LoRA folded into its base layer (a stock
    architecture), adapters collapsed to one static bottleneck each. ``model`` itself is untouched."""
    method = parse_merge_method(method)
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, MixtureLoRALinear):
            delta = merged_lora_delta(module.lora_A.detach(), module.lora_B.detach(), method)
            set_submodule(merged, name, fold_lora_into_linear(module.base, delta, module.scaling))
        elif isinstance(module, LinearWithAdapter) and isinstance(module.adapter, MixtureAdapter):
            module.adapter = collapse_adapter(module.adapter, method)
    for param in merged.parameters():
        param.requires_grad_(False)
    return merged.eval()
