"""AdaMix's consistency regulariser: two forward passes with independent routing should agree.

loss = w * 0.5 * (KL(p || sg(q)) + KL(q || sg(p))), sg = stop-gradient: each pass is pulled towards the
other, neither is used as a fixed target. For generation it is computed per target token, masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows (or over the rows where ``mask`` is true) of 0.5 * (KL(p||sg(q)) + KL(q||sg(p)))."""
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    kl_p_q = (log_p.exp() * (log_p - log_q.detach())).sum(-1)
    kl_q_p = (log_q.exp() * (log_q - log_p.detach())).sum(-1)
    per_row = 0.5 * (kl_p_q + kl_q_p)
    if mask is not None:
        per_row = per_row[mask]
    if per_row.numel() == 0:
        return logits_p.new_zeros(())
    return per_row.mean()
