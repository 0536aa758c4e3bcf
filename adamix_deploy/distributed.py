"""Training on several processes: ``adamix-train`` under ``torchrun`` (DistributedDataParallel).

One idea: ``Distributed`` is what the training loop needs to know about its processes. Outside torchrun (no
``WORLD_SIZE`` in the environment, or 1) it is a single process and every method does exactly what the loop
did before (a no-op, or the plain call), so single-process training is unchanged bit for bit.

Under torchrun, with W processes (gloo on CPU, NCCL on GPU, one GPU per process: ``cuda:LOCAL_RANK``):

- ``--batch-size`` is the GLOBAL batch. Each step every rank cuts the same chunk of the epoch's permutation
  (same seed) and takes its contiguous slice of it, batch / W examples; the batch must divide by W. Steps per
  epoch, the learning-rate schedule and the checkpoint are those of one process with that batch. Each rank's
  loss is weighted by W x its share of the chunk (examples; target tokens for generation, whose losses are
  token means), so DDP's gradient average is the gradient of the whole chunk's mean loss, also for a short
  last chunk. A rank left without examples (a last chunk shorter than W) runs one example with weight 0:
  DDP needs every rank in every step, and every rank must draw the same routes.
- Routing: every rank draws the SAME experts. AdaMix picks one expert per side per forward call; with equal
  draws the averaged gradient is that of one routing per step over the global batch, as in a single process
  (independent draws would average W routings: another estimator, which no single-process run reproduces).
  Mechanism: the draws come from a routing RNG state every rank holds identically, initialised from torch's
  global generator once the model is built (same seed, same initialisation everywhere; on --resume the saved
  state), and swapped in around each ``MixtureModule.pick`` (``mixture.random_expert`` draws from the global
  generator, and dropout on CPU consumes that generator by tensor size, which differs between ranks). The
  global generator then serves dropout only, reseeded each step from (seed, rank, step): different masks on
  each rank, and a resumed run needs no per-rank state. A digest of the routing state is compared across
  ranks every step; a mismatch stops the run.
- The consistency loss's two passes run inside ONE call of the DDP module (``_Objective``): DDP sees one
  forward and one backward per step, and each parameter's gradient sums both passes before DDP reduces it.
- ``find_unused_parameters`` stays False: each side's experts are slices of one stacked parameter, so every
  trainable parameter gets a gradient every step (zero in the slices not picked);
  tests/training/test_distributed.py checks it.
- Rank 0 evaluates and writes the checkpoint (atomically, as one process does); the others wait. Evaluation
  may draw routes (``--eval-routing random``): rank 0's routing state is then sent to all, so the next epoch
  routes as one process would. What is saved (weights, optimizer, scheduler, routing RNG) is the same on every
  rank, so ``--resume`` restores it on each rank, with any number of processes that divides the batch.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adamix_deploy.collate import IGNORE_INDEX
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.mixture import mixture_modules
from adamix_deploy.objective import adamix_loss

# Rank 0 evaluates, decodes and writes checkpoints while the others wait: longer than the backends' defaults.
WAIT = timedelta(hours=2)


class _Objective(nn.Module):
    """The whole AdaMix objective (both passes) as one module call, so that DDP sees one forward per step."""

    def __init__(self, model: nn.Module, task: str, consistency_weight: float, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.task, self.consistency_weight, self.label_smoothing = task, consistency_weight, label_smoothing

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return adamix_loss(self.model, batch, self.task, self.consistency_weight, self.label_smoothing)


def _share(task: str, items: Sequence[dict]) -> int:
    """How much of a loss mean these items carry: examples, or target tokens for generation."""
    if task != "generation":
        return len(items)
    return sum(sum(label != IGNORE_INDEX for label in item["labels"][1:]) for item in items)


class Distributed:
    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.is_main = rank == 0
        self.device = torch.device("cpu")
        self.routing: torch.Tensor | None = None  # the routing RNG state (several processes only)

    @classmethod
    def from_environment(cls) -> Distributed:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def several(self) -> bool:
        return self.world_size > 1

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise AdamixError(
                f"--batch-size {batch_size} is the global batch: it must divide by the {self.world_size} processes"
            )

    def choose_device(self, requested: str | None) -> torch.device:
        device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.several and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
        return device

    @contextmanager
    def started(self, requested_device: str | None) -> Iterator[Distributed]:
        """Join the process group for the duration of a run (NCCL on GPU, gloo on CPU)."""
        if not self.several:
            yield self
            return
        self.device = self.choose_device(requested_device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size, timeout=WAIT)
        try:
            yield self
        finally:
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.several:
            dist.barrier()

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0 only (evaluation, decoding); every rank gets its result, and rank 0's
        routing state (evaluation may have drawn routes)."""
        if not self.several:
            return compute()
        message = [compute() if self.is_main else None, self.routing]
        dist.broadcast_object_list(message, src=0)
        result, self.routing = message
        return result

    # -- routing --------------------------------------------------------------------------------------------

    def share_routing(self, model: nn.Module) -> None:
        """Draw every rank's routes from one RNG state, from now on (call once the model is built/restored)."""
        if not self.several:
            return
        self.routing = torch.get_rng_state()
        for _, module in mixture_modules(model):
            module.pick = self._routed(module.pick)

    def _routed(self, pick: Callable) -> Callable:
        @functools.wraps(pick)
        def routed(*stacks: torch.Tensor):
            data = torch.get_rng_state()
            torch.set_rng_state(self.routing)
            try:
                return pick(*stacks)
            finally:
                self.routing = torch.get_rng_state()
                torch.set_rng_state(data)

        return routed

    def rng_state(self) -> torch.Tensor:
        """The RNG state a checkpoint saves for --resume: the routing state, the same on every rank."""
        return self.routing if self.several else torch.get_rng_state()

    def seed_dropout(self, seed: int, step: int) -> None:
        """Several processes: each rank's dropout (the global generators, CPU and CUDA) from (seed, rank, step)."""
        if self.several:
            digest = hashlib.blake2b(f"{seed}/{self.rank}/{step}".encode(), digest_size=8).digest()
            torch.manual_seed(int.from_bytes(digest, "little") >> 1)

    # -- the step ---------------------------------------------------------------------------------------------

    def objective(self, model: nn.Module, task: str, consistency_weight: float, label_smoothing: float):
        """``batch -> (loss, parts)``: the AdaMix objective, through DDP with several processes."""
        if not self.several:
            return functools.partial(
                adamix_loss,
                model,
                task=task,
                consistency_weight=consistency_weight,
                label_smoothing=label_smoothing,
            )
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            _Objective(model, task, consistency_weight, label_smoothing),
            device_ids=device_ids,
            broadcast_buffers=False,  # no buffer changes in training (no batch norm); all ranks start equal
            find_unused_parameters=False,  # stacked experts: every trainable parameter gets a gradient
        )

    def shard(self, chunk: Sequence[int], items: Sequence[dict], task: str) -> tuple[list[dict], float]:
        """This rank's items of a global chunk, and the weight of its loss (1 for one process)."""
        if not self.several:
            return [items[i] for i in chunk], 1.0
        everything = [items[i] for i in chunk]
        mine = [everything[i] for i in torch.tensor_split(torch.arange(len(chunk)), self.world_size)[self.rank]]
        if not mine:  # a forward all the same, with no weight: DDP and the routing need every rank
            return everything[:1], 0.0
        return mine, self.world_size * _share(task, mine) / max(_share(task, everything), 1)

    def global_loss(self, loss: float, weight: float) -> float:
        """The global batch's loss (every rank's weighted share, summed); also checks that all ranks still
        hold the same routing state."""
        if not self.several:
            return loss
        digest = int.from_bytes(hashlib.blake2b(self.routing.numpy().tobytes(), digest_size=6).digest(), "little")
        mine = torch.tensor([loss * weight / self.world_size, float(digest)], dtype=torch.float64)
        mine = mine.to(self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        table = torch.stack(gathered).cpu()
        if not torch.all(table[:, 1] == table[0, 1]):
            raise AdamixError("the processes' routing draws diverged (a bug): stopping")
        return float(table[:, 0].sum())
