"""Mixture of Houlsby bottleneck adapters: ``h + up(act(down(h)))`` with M experts per side.

Initialisation (``init``):
- ``official``: every expert's down and up weights drawn independently from N(0, 0.02), biases zero; the up
  side is *not* zero. This is what the official code ends up with: ``MixtureSoup`` deep-copies one
  ``nn.Linear`` per expert, then ``RobertaPreTrainedModel._init_weights`` re-draws every ``nn.Linear``
  (microsoft/AdaMix ``src/transformers/models/expert_soup.py``, ``modeling_roberta.py``).
- ``kaiming-zero-up``: ``nn.Linear``'s own initialisation for down (kaiming-uniform weight, uniform bias),
  up zero, so the module starts as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from adamix_deploy.mixture import MixtureModule, side_sizes

OFFICIAL_INIT_STD = 0.02  # BERT/RoBERTa's initializer_range, which the official code's re-initialisation uses


class MixtureAdapter(MixtureModule):
    """M bottleneck adapters (d -> r -> d)."""

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        experts: int,
        share: str = "up",
        activation: str = "gelu",
        init: str = "official",
    ) -> None:
        super().__init__(experts, share)
        n_down, n_up = side_sizes(experts, share)
        self.hidden_size, self.bottleneck, self.activation = hidden_size, bottleneck, activation
        self.down_weight = nn.Parameter(torch.empty(n_down, bottleneck, hidden_size))
        self.down_bias = nn.Parameter(torch.empty(n_down, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(n_up, hidden_size, bottleneck))
        self.up_bias = nn.Parameter(torch.zeros(n_up, hidden_size))
        self.act = ACT2FN[activation]
        if init == "official":
            for weight in (self.down_weight, self.up_weight):
                nn.init.normal_(weight, std=OFFICIAL_INIT_STD)
            nn.init.zeros_(self.down_bias)
        else:
            for i in range(n_down):  # nn.Linear's own initialisation, expert by expert
                nn.init.kaiming_uniform_(self.down_weight[i], a=math.sqrt(5))
                nn.init.uniform_(self.down_bias[i], -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size))

    def bottleneck_path(self, h, down_w, down_b, up_w, up_b):
        return F.linear(self.act(F.linear(h, down_w, down_b)), up_w, up_b)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "ensemble":
            members = zip(
                self.ensemble_indices(self.down_weight.shape[0]),
                self.ensemble_indices(self.up_weight.shape[0]),
                strict=True,
            )
            paths = [
                self.bottleneck_path(h, self.down_weight[d], self.down_bias[d], self.up_weight[u], self.up_bias[u])
                for d, u in members
            ]
            return h + torch.stack(paths).mean(0)
        (down_w, down_b), i_down = self.pick(self.down_weight, self.down_bias)
        (up_w, up_b), i_up = self.pick(self.up_weight, self.up_bias)
        self.last_route = (i_down, i_up)
        return h + self.bottleneck_path(h, down_w, down_b, up_w, up_b)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden_size}, bottleneck={self.bottleneck}, experts={self.num_experts}, "
            f"share={self.share}, activation={self.activation}"
        )


class LinearWithAdapter(nn.Module):
    """A projection followed by an adapter: the adapter sits after the projection, before the dropout and
    residual LayerNorm that the host layer applies next (the reference Houlsby/AdaMix placement)."""

    def __init__(self, base: nn.Module, adapter: MixtureAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))
