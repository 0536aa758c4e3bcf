"""The AdaMix training objective: the task loss of the first pass plus the consistency loss between two
independently routed passes. One function, so the method's whole objective reads in one place.

As in the official code (``RobertaForSequenceClassification.forward``, ``GPT2LMModel.forward``): the task
loss is taken on the first pass only (the second pass's cross-entropy is commented out there), and the
consistency term is added with a weight (1 for NLU, 100 for NLG in the official scripts). Generation's
task loss may use label smoothing (0.1 in the official E2E runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adamix_deploy.collate import IGNORE_INDEX
from adamix_deploy.consistency import squared_difference, symmetric_kl
from adamix_deploy.evaluation import causal_lm_loss


def adamix_loss(
    model, batch: dict, task: str, consistency_weight: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """Task loss of pass 1 + w * consistency between pass 1 and pass 2 (each routed independently at random).

    With w = 0 a single pass is made: the plain single-module objective."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits_p = model(**inputs).logits
    task_loss = task_loss_of(logits_p, labels, task, label_smoothing)
    if consistency_weight == 0:
        return task_loss, {"task": task_loss.item(), "consistency": 0.0}
    logits_q = model(**inputs).logits  # a new random expert per module (and new dropout): another routing
    if task == "classification":
        consistency = symmetric_kl(logits_p, logits_q)
    elif task == "regression":
        consistency = squared_difference(logits_p, logits_q)
    else:  # per target token: position t predicts label t + 1
        consistency = symmetric_kl(logits_p[:, :-1], logits_q[:, :-1], labels[:, 1:] != IGNORE_INDEX)
    loss = task_loss + consistency_weight * consistency
    return loss, {"task": task_loss.item(), "consistency": consistency.item()}


def task_loss_of(
    logits: torch.Tensor, labels: torch.Tensor, task: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(logits.float(), labels)
    if task == "regression":
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return causal_lm_loss(logits, labels, label_smoothing)
