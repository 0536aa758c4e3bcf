"""Where mixture modules go in each model family, and what trains."""

from __future__ import annotations

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from adamix_deploy.adapter import LinearWithAdapter
from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import ModelError
from adamix_deploy.inject import inject_mixture
from adamix_deploy.lora import MixtureLoRALinear
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer


def build(path, task, spec):
    labels = ["0", "1"] if task == "classification" else None
    model, head, _ = build_mixture_model(path, task, labels, spec, load_tokenizer(path))
    return model, head


def test_bert_adapter_sits_after_ffn_output_projection_only(tiny_bert):
    model, head = build(tiny_bert, "classification", MixtureSpec("adapter", experts=2))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LinearWithAdapter)}
    assert wrapped == {f"bert.encoder.layer.{i}.output.dense" for i in range(2)}
    assert head == ["classifier.bias", "classifier.weight"]


def test_bert_ffn_plus_attention_placement(tiny_bert):
    model, _ = build(tiny_bert, "classification", MixtureSpec("adapter", experts=2, placement="ffn+attn"))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LinearWithAdapter)}
    assert wrapped == {
        f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in ("output.dense", "attention.output.dense")
    }


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("tiny_bert", {"attention.self.query", "attention.self.value"}),
        ("tiny_gpt2", {"attn.c_attn"}),
        ("tiny_llama", {"self_attn.q_proj", "self_attn.v_proj"}),
    ],
)
def test_lora_family_default_targets(request, fixture, expected):
    task = "classification" if fixture == "tiny_bert" else "generation"
    model, _ = build(request.getfixturevalue(fixture), task, MixtureSpec("lora", experts=2))
    names = [n for n, m in model.named_modules() if isinstance(m, MixtureLoRALinear)]
    assert len(names) == 2 * len(expected)
    assert {
        ".".join(n.split(".")[-len(e.split(".")) :]) for n in names for e in expected if n.endswith(e)
    } == expected


def test_only_mixture_and_head_train(tiny_bert):
    model, head = build(tiny_bert, "classification", MixtureSpec("lora", experts=3))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n} | set(head)
    assert all(".base." not in n for n in trainable)
    assert any(not p.requires_grad for n, p in model.named_parameters() if "base.weight" in n)


def test_targets_override_defaults(tiny_bert):
    model, _ = build(tiny_bert, "classification", MixtureSpec("lora", experts=2, targets=[r"layer\.1\..*key"]))
    names = [n for n, m in model.named_modules() if isinstance(m, MixtureLoRALinear)]
    assert names == ["bert.encoder.layer.1.attention.self.key"]


def test_unknown_family_needs_targets(tmp_path):
    model = OPTForCausalLM(
        OPTConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(ModelError, match="unknown model family 'opt': pass --targets"):
        inject_mixture(model, MixtureSpec("lora", experts=2))
    spec = MixtureSpec("lora", experts=2, targets=["q_proj"])
    injected = inject_mixture(model, spec)
    assert injected.modules == ["model.decoder.layers.0.self_attn.q_proj"]
    assert spec.modules == []  # the spec given is left as it was


def test_targets_matching_nothing_is_an_error(tiny_bert):
    with pytest.raises(ModelError, match="no module .* matches targets"):
        build(tiny_bert, "classification", MixtureSpec("lora", experts=2, targets=["nonexistent"]))


def test_head_only_method_adds_no_mixture(tiny_bert):
    model, head = build(tiny_bert, "classification", MixtureSpec("head"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(head)
    assert not torch.any(torch.tensor([isinstance(m, MixtureLoRALinear) for m in model.modules()]))
