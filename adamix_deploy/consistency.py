"""AdaMix's consistency regulariser: two forward passes with independent routing should agree.

The official form (microsoft/AdaMix, ``modeling_roberta.py:symmetric_KL_loss`` for NLU and
``NLG/src/model.py:symmetric_KL_loss`` for NLG):

    0.5 * [KL(sg(q) || p) + KL(sg(p) || q)],   sg = stop-gradient

Each pass is pulled towards the other's (detached) distribution through its own log-probabilities only; the
value equals 0.5 * [KL(p||q) + KL(q||p)], the gradient is that of two cross-entropies against fixed targets.
For generation it is computed per target token (the official ``lm_mask``) and averaged over those tokens.
A regression head has one output, where a softmax is constant and the KL is identically zero (so the
official code's term does nothing on STS-B); `consistency_loss` uses the squared difference of the two
predictions there instead (the R-Drop form for regression).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows (or over the rows where ``mask`` is true) of 0.5 * [KL(sg(q)||p) + KL(sg(p)||q)]."""
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    target_p, target_q = log_p.detach(), log_q.detach()
    kl_q_p = (target_q.exp() * (target_q - log_p)).sum(-1)  # KL(sg(q) || p): gradient reaches p only
    kl_p_q = (target_p.exp() * (target_p - log_q)).sum(-1)  # KL(sg(p) || q): gradient reaches q only
    per_row = 0.5 * (kl_q_p + kl_p_q)
    if mask is not None:
        per_row = per_row[mask]
    if per_row.numel() == 0:
        return logits_p.new_zeros(())
    return per_row.mean()


def squared_difference(pred_p: torch.Tensor, pred_q: torch.Tensor) -> torch.Tensor:
    """Regression: mean of (p - q)^2 over the batch; both passes receive the gradient, as in R-Drop."""
    return (pred_p.float() - pred_q.float()).pow(2).mean()
