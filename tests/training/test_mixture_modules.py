"""The AdaMix mixture modules: routing, the average merge, ensemble, sharing, LoRA on Linear and Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adamix_deploy import MixtureAdapter, MixtureLoRALinear, Routing, set_routing
from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import AdamixError

from helpers.models import randomised


def routes(module, x, calls: int) -> list[tuple]:
    out = []
    for _ in range(calls):
        module(x)
        out.append(module.last_route)
    return out


def test_training_routes_each_side_independently_and_per_call():
    torch.manual_seed(0)
    adapter = randomised(MixtureAdapter(8, 4, experts=4, share="none")).train()
    seen = routes(adapter, torch.randn(2, 8), 200)
    downs, ups = {d for d, _ in seen}, {u for _, u in seen}
    assert downs == ups == {0, 1, 2, 3}  # uniform over experts: every expert is used
    assert len(set(seen)) == 16  # every (down, up) pair occurs: the sides are not tied together
    assert sum(d != u for d, u in seen) > 100
    assert len({seen[i] for i in range(10)}) > 1  # a new choice per call


def test_modules_route_independently_of_each_other():
    torch.manual_seed(0)
    a = MixtureLoRALinear(nn.Linear(8, 8), rank=2, alpha=4, experts=4, share="none").train()
    b = MixtureLoRALinear(nn.Linear(8, 8), rank=2, alpha=4, experts=4, share="none").train()
    x = torch.randn(3, 8)
    pairs = []
    for _ in range(100):
        b(a(x))
        pairs.append((a.last_route, b.last_route))
    assert sum(ra != rb for ra, rb in pairs) > 50


def test_shared_side_always_uses_its_single_module():
    torch.manual_seed(0)
    adapter = MixtureAdapter(8, 4, experts=4, share="up").train()
    seen = routes(adapter, torch.randn(2, 8), 50)
    assert {u for _, u in seen} == {0}
    assert len({d for d, _ in seen}) == 4


def test_average_adapter_equals_adapter_built_from_averaged_weights():
    adapter = randomised(MixtureAdapter(8, 4, experts=4, share="none")).eval()
    single = MixtureAdapter(8, 4, experts=1).eval()
    with torch.no_grad():
        for name in ("down_weight", "down_bias", "up_weight", "up_bias"):
            getattr(single, name).copy_(getattr(adapter, name).mean(0, keepdim=True))
    x = torch.randn(5, 8)
    set_routing(adapter, "average")
    torch.testing.assert_close(adapter(x), single(x), rtol=0, atol=1e-6)
    assert adapter.last_route == (None, None)


def test_average_lora_equals_linear_with_mean_B_times_mean_A_folded_in():
    base = nn.Linear(6, 10)
    lora = randomised(MixtureLoRALinear(base, rank=3, alpha=6, experts=4, share="none")).eval()
    folded = nn.Linear(6, 10)
    with torch.no_grad():
        delta = lora.lora_B.mean(0) @ lora.lora_A.mean(0)
        folded.weight.copy_(base.weight + lora.scaling * delta)
        folded.bias.copy_(base.bias)
    x = torch.randn(7, 6)
    torch.testing.assert_close(lora(x), folded(x), rtol=0, atol=1e-5)


def test_lora_on_gpt2_conv1d_uses_in_out_layout():
    base = Conv1D(12, 6)  # nf=12 outputs, nx=6 inputs; weight is (6, 12)
    lora = randomised(MixtureLoRALinear(base, rank=2, alpha=2, experts=3, share="none")).eval()
    assert lora.lora_A.shape == (3, 2, 6) and lora.lora_B.shape == (3, 12, 2)
    x = torch.randn(4, 6)
    expected = x @ (base.weight + lora.scaling * (lora.lora_B.mean(0) @ lora.lora_A.mean(0)).T) + base.bias
    torch.testing.assert_close(lora(x), expected, rtol=0, atol=1e-5)


def test_fresh_modules_start_as_identity_or_base():
    x = torch.randn(3, 8)
    torch.testing.assert_close(MixtureAdapter(8, 4, experts=4, init="kaiming-zero-up").eval()(x), x)
    base = nn.Linear(8, 5)
    for init in ("official", "kaiming-zero-up"):
        torch.testing.assert_close(MixtureLoRALinear(base, 2, 4, experts=4, init=init).eval()(x), base(x))


def test_official_lora_init_makes_every_a_expert_the_same_kaiming_draw():
    torch.manual_seed(0)
    lora = MixtureLoRALinear(nn.Linear(64, 32), rank=4, alpha=8, experts=8, share="up", init="official")
    for i in range(1, 8):
        assert torch.equal(lora.lora_A[i], lora.lora_A[0])
    assert not lora.lora_B.any()
    # so the averaged A is one expert's A (not ~1/sqrt(M) of its norm, as with independent draws)
    torch.testing.assert_close(lora.lora_A.mean(0), lora.lora_A[0])
    bound = 1 / 64**0.5  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert lora.lora_A.abs().max() <= bound and lora.lora_A.abs().max() > 0.9 * bound
    independent = MixtureLoRALinear(nn.Linear(64, 32), rank=4, alpha=8, experts=8, init="kaiming-zero-up")
    assert not torch.equal(independent.lora_A[1], independent.lora_A[0])
    assert independent.lora_A.mean(0).norm() < 0.6 * independent.lora_A[0].norm()


def test_official_adapter_init_draws_independent_normal_experts_with_zero_biases():
    torch.manual_seed(0)
    adapter = MixtureAdapter(384, 16, experts=4, share="up", init="official")
    assert adapter.down_weight.shape == (4, 16, 384) and adapter.up_weight.shape == (1, 384, 16)
    assert not torch.equal(adapter.down_weight[0], adapter.down_weight[1])
    for weight in (adapter.down_weight, adapter.up_weight):  # N(0, 0.02), the up side too (not zero)
        assert abs(weight.std().item() - 0.02) < 0.001 and abs(weight.mean().item()) < 0.001
    assert not adapter.down_bias.any() and not adapter.up_bias.any()


def test_expert_routing_uses_that_expert_on_both_sides():
    adapter = randomised(MixtureAdapter(8, 4, experts=3, share="none")).eval()
    set_routing(adapter, "expert:2")
    x = torch.randn(2, 8)
    d_w, d_b, u_w, u_b = (
        adapter.down_weight[2],
        adapter.down_bias[2],
        adapter.up_weight[2],
        adapter.up_bias[2],
    )
    expected = x + torch.nn.functional.linear(adapter.act(torch.nn.functional.linear(x, d_w, d_b)), u_w, u_b)
    torch.testing.assert_close(adapter(x), expected)
    assert adapter.last_route == (2, 2)
    with pytest.raises(AdamixError, match="expert:3 does not exist"):
        set_routing(adapter, "expert:3")


@pytest.mark.parametrize("share", ["none", "up", "down"])
def test_ensemble_is_mean_of_expert_outputs(share):
    lora = randomised(MixtureLoRALinear(nn.Linear(6, 6), rank=2, alpha=2, experts=3, share=share)).eval()
    adapter = randomised(MixtureAdapter(6, 3, experts=3, share=share)).eval()
    x = torch.randn(4, 6)
    for module in (lora, adapter):
        members = []
        for i in range(3):
            set_routing(module, f"expert:{i}")
            members.append(module(x))
        set_routing(module, "ensemble")
        torch.testing.assert_close(module(x), torch.stack(members).mean(0))
    # For LoRA with a shared side, the ensemble collapses to the average merge (the delta is linear).
    set_routing(lora, "average")
    averaged = lora(x)
    set_routing(lora, "ensemble")
    if share == "none":
        assert not torch.allclose(lora(x), averaged, atol=1e-4)
    else:
        torch.testing.assert_close(lora(x), averaged, rtol=0, atol=1e-5)


def test_random_routing_at_inference_varies_between_calls():
    torch.manual_seed(0)
    adapter = randomised(MixtureAdapter(8, 4, experts=4, share="none")).eval()
    set_routing(adapter, "random")
    x = torch.randn(2, 8)
    outputs = {tuple(adapter(x).flatten().tolist()) for _ in range(30)}
    assert len(outputs) > 1


@pytest.mark.parametrize(("share", "n_down", "n_up"), [("none", 4, 4), ("up", 4, 1), ("down", 1, 4)])
def test_sharing_changes_parameter_count(share, n_down, n_up):
    d, r = 8, 4
    adapter = MixtureAdapter(d, r, experts=4, share=share)
    assert sum(p.numel() for p in adapter.parameters()) == n_down * (r * d + r) + n_up * (d * r + d)
    lora = MixtureLoRALinear(nn.Linear(d, 10), rank=r, alpha=8, experts=4, share=share)
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if not n.startswith("base."))
    assert lora_params == n_down * r * d + n_up * 10 * r


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"experts": 0}, "experts must be >= 1"),
        ({"share": "both"}, "share must be one of"),
        ({"bottleneck": 0}, "bottleneck must be > 0"),
    ],
)
def test_adapter_spec_rejects_bad_sizes(kwargs, message):
    # validated once, where a mixture is configured; the modules built from a spec trust it
    with pytest.raises(AdamixError, match=message):
        MixtureSpec(**{"method": "adapter", "bottleneck": 4, "experts": 2, **kwargs})


def test_lora_rejects_bad_rank_and_layer_type():
    with pytest.raises(AdamixError, match="rank must be > 0"):
        MixtureSpec(method="lora", rank=0, experts=2)
    with pytest.raises(AdamixError, match="only nn.Linear and Conv1D"):
        MixtureLoRALinear(nn.Embedding(4, 4), rank=2, alpha=1, experts=2)


def test_routing_parse():
    assert Routing.parse("expert:3") == Routing("expert", 3)
    assert str(Routing.parse("ensemble")) == "ensemble"
    for bad in ("expert:x", "gate", ""):
        with pytest.raises(AdamixError):
            Routing.parse(bad)
