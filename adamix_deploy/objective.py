"""The AdaMix training objective: the task loss plus the consistency loss between two independently routed
passes. One function, so the method's whole objective reads in one place."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adamix_deploy.collate import IGNORE_INDEX
from adamix_deploy.consistency import symmetric_kl
from adamix_deploy.evaluation import causal_lm_loss


def adamix_loss(model, batch: dict, task: str, consistency_weight: float) -> tuple[torch.Tensor, dict]:
    """Task loss (mean over the two passes) + w * symmetric KL between two independently routed passes.

    With w = 0 a single pass is made: the plain single-module objective."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits_p = model(**inputs).logits
    task_loss = _task_loss(logits_p, labels, task)
    if consistency_weight == 0:
        return task_loss, {"task": task_loss.item(), "consistency": 0.0}
    logits_q = model(**inputs).logits  # a new random expert per module: an independent routing
    task_loss = 0.5 * (task_loss + _task_loss(logits_q, labels, task))
    if task == "classification":
        consistency = symmetric_kl(logits_p, logits_q)
    else:  # per target token: position t predicts label t + 1
        consistency = symmetric_kl(logits_p[:, :-1], logits_q[:, :-1], labels[:, 1:] != IGNORE_INDEX)
    loss = task_loss + consistency_weight * consistency
    return loss, {"task": task_loss.item(), "consistency": consistency.item()}


def _task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(logits.float(), labels)
    return causal_lm_loss(logits, labels)
