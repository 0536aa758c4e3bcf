"""What every mixture module shares: M experts per side, stacked, and one place that decides the routing.

Each side (adapter: down/up; LoRA: A/B) keeps its experts stacked in one parameter of shape
``(n, ...)``: ``n`` is the number of experts, or 1 when that side is shared by all experts. Stacking keeps
the merge a plain ``mean(0)`` and the checkpoint a handful of tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.routing import Routing


def side_sizes(experts: int, share: str) -> tuple[int, int]:
    """Number of stacked experts on the (down, up) sides; a shared side holds one module.
    (``MixtureSpec`` has checked the values.)"""
    return (1 if share == "down" else experts), (1 if share == "up" else experts)


class MixtureModule(nn.Module):
    """Base class: holds the routing and picks, per call, the weights each side uses."""

    def __init__(self, experts: int, share: str) -> None:
        super().__init__()
        self.num_experts = experts
        self.share = share
        self.routing = Routing()
        # (down index, up index) chosen by the last routed call; None for a side that was averaged.
        # Kept for inspection and tests: routing is the heart of AdaMix and should be observable.
        self.last_route: tuple[int | None, int | None] | None = None

    def set_routing(self, routing: Routing) -> None:
        if routing.mode == "expert" and not 0 <= routing.expert < self.num_experts:
            raise AdamixError(f"expert:{routing.expert} does not exist: this mixture has {self.num_experts}")
        self.routing = routing

    @property
    def mode(self) -> str:
        """Training always routes at random; at inference the routing set by ``set_routing`` applies."""
        return "random" if self.training else self.routing.mode

    def pick(self, *stacks: torch.Tensor) -> tuple[list[torch.Tensor], int | None]:
        """Select one side's weights (several tensors of one side share one index) for a routed call."""
        n = stacks[0].shape[0]
        mode = self.mode
        if mode == "average":
            return [s.mean(0) for s in stacks], None
        if mode == "random":
            index = random_expert(n)
        elif mode == "expert":
            index = self.routing.expert if n > 1 else 0
        else:
            raise AdamixError(f"routing {mode!r} is not a single-path routing")
        return [s[index] for s in stacks], index

    def ensemble_indices(self, n: int) -> Iterator[int]:
        """Expert i of a side for ensemble member i (a shared side is the same module for every member)."""
        return (i if n > 1 else 0 for i in range(self.num_experts))


def mixture_modules(model: nn.Module) -> list[tuple[str, MixtureModule]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MixtureModule)]


def set_routing(model: nn.Module, routing: Routing | str) -> int:
    """Set the inference routing of every mixture module in ``model``; returns how many were set."""
    if isinstance(routing, str):
        routing = Routing.parse(routing)
    modules = mixture_modules(model)
    for _, module in modules:
        module.set_routing(routing)
    return len(modules)


def random_expert(num_experts: int) -> int:
    """One uniformly random expert index, drawn from torch's global generator (so seeds reproduce runs)."""
    if num_experts == 1:
        return 0
    return int(torch.randint(num_experts, (1,)).item())
