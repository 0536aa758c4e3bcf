"""Mixture of LoRA experts on a frozen ``nn.Linear`` or GPT-2 ``Conv1D``.

``y = W x + b + (alpha / r) * B_j A_i dropout(x)`` where A (r x d_in, the "down" side) and B (d_out x r,
the "up" side) each have M experts, picked independently per call in training.

Initialisation (``init``):
- ``official``: one kaiming-uniform A deep-copied into every expert, B zero (microsoft/AdaMix
  ``NLG/loralib/layers.py:AdamixMergedLinear.__init__``). All experts start identical, so the mixture starts
  exactly equal to one LoRA, and the average of the experts stays a meaningful LoRA.
- ``kaiming-zero-up``: each A expert drawn independently, B zero. mean(A) then starts with about 1/sqrt(M) of
  one expert's norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.mixture import MixtureModule, side_sizes


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise AdamixError(f"cannot attach LoRA to {type(module).__name__}: only nn.Linear and Conv1D are supported")


class MixtureLoRALinear(MixtureModule):
    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        experts: int,
        share: str = "up",
        dropout: float = 0.0,
        init: str = "official",
    ) -> None:
        super().__init__(experts, share)
        in_features, out_features = linear_features(base)
        n_a, n_b = side_sizes(experts, share)
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(n_a, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_b, out_features, rank))  # zero: starts as the base layer
        with torch.no_grad():
            for i in range(n_a):
                nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
            if init == "official":
                self.lora_A.copy_(self.lora_A[0:1].expand_as(self.lora_A))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        x = self.dropout(x)
        if self.mode == "ensemble":
            members = zip(
                self.ensemble_indices(self.lora_A.shape[0]),
                self.ensemble_indices(self.lora_B.shape[0]),
                strict=True,
            )
            delta = torch.stack([x @ self.lora_A[a].T @ self.lora_B[b].T for a, b in members]).mean(0)
        else:
            (a,), i_a = self.pick(self.lora_A)
            (b,), i_b = self.pick(self.lora_B)
            self.last_route = (i_a, i_b)
            delta = x @ a.T @ b.T
        return out + delta * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, experts={self.num_experts}, share={self.share}"
