"""Merge and fold: the merged model computes what the unmerged mixture computes in the matching routing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from adamix_deploy.adapter import LinearWithAdapter, MixtureAdapter
from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.lora import MixtureLoRALinear
from adamix_deploy.merge import (
    BottleneckAdapter,
    collapse_adapter,
    fold_lora_into_linear,
    merge_mixture_model,
    merged_lora_delta,
)
from adamix_deploy.mixture import MixtureModule, set_routing
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer

from helpers.models import perturb, randomised


@pytest.mark.parametrize("base", [nn.Linear(6, 9), Conv1D(9, 6)], ids=["linear", "conv1d"])
def test_lora_fold_equals_unmerged_average(base):
    lora = randomised(MixtureLoRALinear(base, rank=3, alpha=6, experts=4, share="none")).eval()
    folded = fold_lora_into_linear(base, merged_lora_delta(lora.lora_A, lora.lora_B, "average"), lora.scaling)
    assert type(folded) is type(base)
    x = torch.randn(5, 6)
    torch.testing.assert_close(folded(x), lora(x), rtol=0, atol=1e-5)
    assert not torch.equal(folded.weight, base.weight)  # the base layer was copied, not mutated in place


def test_delta_average_differs_from_average_unless_a_side_is_shared():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 3, 6, generator=g), torch.randn(4, 9, 3, generator=g)
    exact = torch.stack([B[i] @ A[i] for i in range(4)]).mean(0)
    torch.testing.assert_close(merged_lora_delta(A, B, "delta-average"), exact)
    assert not torch.allclose(merged_lora_delta(A, B, "average"), exact, atol=1e-3)
    shared_B = B[:1]
    torch.testing.assert_close(
        merged_lora_delta(A, shared_B, "average"), merged_lora_delta(A, shared_B, "delta-average")
    )
    shared_A = A[:1]
    torch.testing.assert_close(
        merged_lora_delta(shared_A, B, "average"), merged_lora_delta(shared_A, B, "delta-average")
    )


def test_delta_average_fold_equals_unmerged_ensemble():
    lora = randomised(MixtureLoRALinear(nn.Linear(6, 6), rank=2, alpha=4, experts=3, share="none")).eval()
    folded = fold_lora_into_linear(
        lora.base, merged_lora_delta(lora.lora_A, lora.lora_B, "delta-average"), lora.scaling
    )
    set_routing(lora, "ensemble")
    x = torch.randn(4, 6)
    torch.testing.assert_close(folded(x), lora(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["average", "expert:1"])
def test_adapter_collapse_equals_unmerged_routing(method):
    adapter = randomised(MixtureAdapter(8, 4, experts=3, share="up")).eval()
    merged = collapse_adapter(adapter, method)
    assert isinstance(merged, BottleneckAdapter)
    set_routing(adapter, method)
    x = torch.randn(3, 8)
    torch.testing.assert_close(merged(x), adapter(x), rtol=0, atol=1e-6)
    with pytest.raises(AdamixError, match="delta-average applies to LoRA only"):
        collapse_adapter(adapter, "delta-average")


@pytest.mark.parametrize(
    ("fixture", "task", "spec"),
    [
        ("tiny_bert", "classification", MixtureSpec("lora", experts=4, share="none", rank=4)),
        ("tiny_bert", "classification", MixtureSpec("adapter", experts=4, share="up", bottleneck=8)),
        ("tiny_gpt2", "generation", MixtureSpec("lora", experts=3, share="none", rank=4)),
        ("tiny_llama", "generation", MixtureSpec("lora", experts=2, share="up", rank=4)),
    ],
    ids=["bert-lora", "bert-adapter", "gpt2-lora", "llama-lora"],
)
def test_merged_model_matches_mixture_in_average_mode(request, fixture, task, spec):
    path = request.getfixturevalue(fixture)
    tokenizer = load_tokenizer(path)
    model, _, _ = build_mixture_model(
        path, task, ["0", "1"] if task == "classification" else None, spec, tokenizer
    )
    model = perturb(model).eval()
    set_routing(model, "average")
    merged = merge_mixture_model(model, "average")
    assert not any(isinstance(m, MixtureModule) for m in merged.modules())
    batch = tokenizer(["the film was good", "name[Zizzi], food[Thai]"], padding=True, return_tensors="pt")
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(merged(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-4)
    if spec.method == "lora":  # a stock architecture: it saves and loads with plain transformers
        assert not any(isinstance(m, LinearWithAdapter) for m in merged.modules())


def test_merged_lora_model_loads_with_plain_transformers(tiny_gpt2, tmp_path):
    tokenizer = load_tokenizer(tiny_gpt2)
    model, _, _ = build_mixture_model(
        tiny_gpt2, "generation", None, MixtureSpec("lora", experts=2, rank=2), tokenizer
    )
    merged = merge_mixture_model(perturb(model).eval())
    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    set_routing(model, "average")
    torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=0, atol=1e-4)


def test_unknown_merge_method():
    with pytest.raises(AdamixError, match="unknown merge method"):
        merge_mixture_model(nn.Linear(2, 2), "median")
