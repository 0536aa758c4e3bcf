"""The consistency regulariser and the AdaMix objective."""

from __future__ import annotations

import json
import shutil

import torch

from adamix_deploy.config import MixtureSpec
from adamix_deploy.consistency import symmetric_kl
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.objective import adamix_loss


def test_symmetric_kl_is_zero_for_agreeing_passes_and_positive_otherwise():
    logits = torch.randn(4, 5)
    assert symmetric_kl(logits, logits.clone()).item() == 0.0
    assert symmetric_kl(logits, logits + torch.randn(4, 5)).item() > 0


def test_symmetric_kl_matches_its_definition_and_stops_gradients_on_the_other_side():
    p_logits = torch.randn(3, 4, requires_grad=True)
    q_logits = torch.randn(3, 4, requires_grad=True)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    expected = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    value = symmetric_kl(p_logits, q_logits)
    torch.testing.assert_close(value, expected)
    value.backward()
    # Each side receives only the gradient of its own KL term: the other side is a stopped target.
    p2 = p_logits.detach().requires_grad_()
    lp, lq = p2.log_softmax(-1), q_logits.detach().log_softmax(-1)
    (0.5 * (lp.exp() * (lp - lq)).sum(-1).mean()).backward()
    torch.testing.assert_close(p_logits.grad, p2.grad)


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
    model, _ = build_mixture_model(folder, "classification", ["0", "1"], spec, tokenizer)
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
