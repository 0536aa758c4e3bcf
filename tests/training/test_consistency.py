"""The consistency regulariser and the AdaMix objective."""

from __future__ import annotations

import json
import shutil

import torch
import torch.nn.functional as F

from adamix_deploy.config import MixtureSpec
from adamix_deploy.consistency import symmetric_kl
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.objective import adamix_loss


def test_symmetric_kl_is_zero_for_agreeing_passes_and_positive_otherwise():
    logits = torch.randn(4, 5)
    assert symmetric_kl(logits, logits.clone()).item() == 0.0
    assert symmetric_kl(logits, logits + torch.randn(4, 5)).item() > 0


def official_symmetric_kl_loss(input, target):
    """microsoft/AdaMix, src/transformers/models/roberta/modeling_roberta.py: symmetric_KL_loss, verbatim
    (reduction 'batchmean')."""
    loss = F.kl_div(
        F.log_softmax(input, dim=-1, dtype=torch.float32),
        F.softmax(target.detach(), dim=-1, dtype=torch.float32),
        reduction="batchmean",
    ) + F.kl_div(
        F.log_softmax(target, dim=-1, dtype=torch.float32),
        F.softmax(input.detach(), dim=-1, dtype=torch.float32),
        reduction="batchmean",
    )
    return 0.5 * loss.sum()


def test_symmetric_kl_has_the_official_value_and_gradient():
    torch.manual_seed(0)
    p_logits = torch.randn(5, 7, requires_grad=True)
    q_logits = torch.randn(5, 7, requires_grad=True)
    ours = symmetric_kl(p_logits, q_logits)
    ours.backward()
    p2, q2 = p_logits.detach().clone().requires_grad_(), q_logits.detach().clone().requires_grad_()
    official = official_symmetric_kl_loss(p2, q2)
    official.backward()
    torch.testing.assert_close(ours, official)
    torch.testing.assert_close(p_logits.grad, p2.grad)
    torch.testing.assert_close(q_logits.grad, q2.grad)
    # the value is 0.5 * (KL(p||q) + KL(q||p)) ...
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    expected = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    torch.testing.assert_close(ours, expected)
    # ... but the gradient is not that of KL(p || sg q) (the form used before): p is pulled only through log p
    p3 = p_logits.detach().clone().requires_grad_()
    lp, lq = p3.log_softmax(-1), q_logits.detach().log_softmax(-1)
    (0.5 * (lp.exp() * (lp - lq)).sum(-1).mean()).backward()
    assert not torch.allclose(p_logits.grad, p3.grad)


def test_mask_selects_target_positions():
    p, q = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    torch.testing.assert_close(symmetric_kl(p, q, mask), symmetric_kl(p[mask], q[mask]))


def _bert_without_dropout(tiny_bert, folder, experts):
    # Dropout off in the config: BERT's attention reads its dropout rate from there, not from nn.Dropout.
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(folder)
    spec = MixtureSpec("adapter", experts=experts)
    model, _, _ = build_mixture_model(folder, "classification", ["0", "1"], spec, tokenizer)
    with torch.no_grad():  # move the zero-initialised up experts apart, as training does
        for name, p in model.named_parameters():
            if "up_" in name or name.startswith("classifier."):
                p.normal_(0, 0.5)
    return model.train(), tokenizer


def test_adamix_loss_consistency_zero_with_one_expert_positive_with_four(tiny_bert, tmp_path):
    torch.manual_seed(0)
    found = {}
    for experts in (1, 4):
        model, tokenizer = _bert_without_dropout(tiny_bert, tmp_path / "bert", experts)
        batch = dict(tokenizer(["the film was good", "bad plot"], padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor([1, 0])
        loss, parts = adamix_loss(model, batch, "classification", consistency_weight=1.0)
        found[experts] = parts["consistency"]
        assert loss.item() >= parts["task"]
    assert found[1] == 0.0  # one expert, no dropout: the same function twice
    assert found[4] > 0.0  # four experts: the two passes are routed differently


def test_task_loss_is_the_first_pass_only_as_in_the_official_code(tiny_bert, tmp_path):
    model, tokenizer = _bert_without_dropout(tiny_bert, tmp_path / "bert", 4)
    with torch.no_grad():  # experts far apart, so that the two passes clearly differ
        for name, p in model.named_parameters():
            if "down_" in name:
                p.normal_(0, 0.5)
    batch = dict(tokenizer(["the film was good", "bad plot", "fine"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1])
    torch.manual_seed(3)
    loss, parts = adamix_loss(model, batch, "classification", consistency_weight=2.0)
    torch.manual_seed(3)  # replays the first pass's routing
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    first, second = model(**inputs).logits, model(**inputs).logits
    task = F.cross_entropy(first, batch["labels"])  # not the mean of both passes' cross-entropies
    assert abs(parts["task"] - task.item()) < 1e-6
    assert abs(parts["task"] - 0.5 * (task + F.cross_entropy(second, batch["labels"])).item()) > 1e-4
    torch.testing.assert_close(loss, task + 2.0 * symmetric_kl(first, second))


def test_label_smoothing_is_the_official_nlg_loss():
    from adamix_deploy.evaluation import causal_lm_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, 3, -100]])
    ls = 0.1
    # NLG/src/model.py: (1 - ls) * nll + ls * (-logprobs.mean(-1)), over the target tokens
    logprobs = logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    nll = -logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    official = ((1 - ls) * nll + ls * (-logprobs.mean(-1)))[mask].mean()
    torch.testing.assert_close(causal_lm_loss(logits, labels, ls), official)
