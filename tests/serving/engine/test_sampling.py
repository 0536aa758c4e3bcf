"""serving.sampling.next_token: greedy, temperature, top-k and top-p, seeded (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from adamix_deploy.serving.engine.sampling import SamplingParams, next_token

LOGITS = np.array([0.3, 2.5, -1.0, 1.7, 2.2, 0.0, -3.0, 1.1], dtype=np.float32)  # argmax 1, then 4, 3, 7


def draws(logits, params: SamplingParams, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([next_token(logits, params, rng) for _ in range(n)])


def reference_probs(logits, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def test_greedy_picks_the_argmax_and_draws_nothing_from_the_generator():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for seed in range(20):
        logits = np.random.default_rng(seed).normal(size=50).astype(np.float32)
        assert next_token(logits, SamplingParams(), rng) == int(np.argmax(logits))
    assert rng.bit_generator.state == state  # greedy must not consume randomness
    assert next_token(LOGITS, SamplingParams(temperature=0.0), rng) == 1


@pytest.mark.parametrize("params", [SamplingParams(-1.0), SamplingParams(0.0, top_p=0.01, top_k=3)])
def test_temperature_zero_or_below_is_greedy_whatever_top_k_and_top_p(params):
    assert set(draws(LOGITS, params, 50)) == {1}


def test_top_k_1_equals_greedy():
    for seed in range(10):
        logits = np.random.default_rng(seed).normal(size=30).astype(np.float32)
        got = draws(logits, SamplingParams(temperature=5.0, top_k=1), 20, seed)
        assert set(got) == {int(np.argmax(logits))}


def test_top_k_3_never_samples_outside_the_3_largest_and_matches_the_renormalised_softmax():
    n = 6000
    got = draws(LOGITS, SamplingParams(temperature=1.0, top_k=3), n)
    assert set(got) <= {1, 4, 3}
    expected = reference_probs(LOGITS[[1, 4, 3]], 1.0)
    freq = np.array([(got == t).mean() for t in (1, 4, 3)])
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_top_k_at_or_above_the_vocabulary_is_no_cut():
    a = draws(LOGITS, SamplingParams(temperature=1.0, top_k=len(LOGITS)), 300, seed=3)
    b = draws(LOGITS, SamplingParams(temperature=1.0, top_k=1000), 300, seed=3)
    c = draws(LOGITS, SamplingParams(temperature=1.0), 300, seed=3)
    assert (a == c).all() and (b == c).all()
    assert len(set(c)) >= 6  # really sampled from the whole vocabulary


def test_tiny_top_p_keeps_only_the_most_likely_token():
    assert set(draws(LOGITS, SamplingParams(temperature=2.0, top_p=1e-6), 200)) == {1}


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    # probabilities 0.5, 0.3, 0.15, 0.05 (in the order of ids 2, 0, 3, 1)
    logits = np.log(np.array([0.3, 0.05, 0.5, 0.15]))
    n = 6000
    got = draws(logits, SamplingParams(temperature=1.0, top_p=0.7), n)  # 0.5 < 0.7 <= 0.5 + 0.3
    assert set(got) == {2, 0}
    assert abs((got == 2).mean() - 0.5 / 0.8) < 0.03
    got = draws(logits, SamplingParams(temperature=1.0, top_p=0.9), n)  # 0.8 < 0.9 <= 0.95
    assert set(got) == {2, 0, 3}
    got = draws(logits, SamplingParams(temperature=1.0, top_p=1.0), n)
    assert set(got) == {0, 1, 2, 3}


def test_top_k_applies_before_top_p():
    # top-k keeps ids 1, 4 (probabilities renormalised over the two); top_p 0.5 then keeps only id 1
    got = draws(LOGITS, SamplingParams(temperature=1.0, top_k=2, top_p=0.5), 300)
    assert set(got) == {1}


def test_temperature_sharpens_and_flattens_as_the_softmax_of_logits_over_temperature():
    n = 8000
    for temperature in (0.5, 1.0, 3.0):
        got = draws(LOGITS, SamplingParams(temperature=temperature), n, seed=11)
        freq = np.bincount(got, minlength=len(LOGITS)) / n
        np.testing.assert_allclose(freq, reference_probs(LOGITS, temperature), atol=0.025)
    assert set(draws(LOGITS, SamplingParams(temperature=1e-3), 200)) == {1}


def test_float16_logits_are_accepted():
    logits = LOGITS.astype(np.float16)
    assert next_token(logits, SamplingParams(), np.random.default_rng(0)) == 1
    assert set(draws(logits, SamplingParams(temperature=1.0, top_k=2), 100)) <= {1, 4}


def test_the_same_seed_repeats_and_different_seeds_differ():
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=6)
    a = draws(LOGITS, params, 64, seed=1234)
    assert (a == draws(LOGITS, params, 64, seed=1234)).all()
    others = [draws(LOGITS, params, 64, seed=s) for s in (1235, 0, 99)]
    assert all((a != b).any() for b in others)


def test_the_choice_depends_only_on_the_generator_state():
    """One generator per row: a row's tokens must not depend on what other rows drew."""
    params = SamplingParams(temperature=1.0)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    other = np.random.default_rng(6)
    a = [next_token(LOGITS, params, r1) for _ in range(30)]
    b = []
    for _ in range(30):
        next_token(LOGITS, params, other)
        b.append(next_token(LOGITS, params, r2))
    assert a == b


def test_a_tiny_positive_temperature_behaves_like_greedy():
    with np.errstate(all="ignore"):
        assert set(draws(LOGITS, SamplingParams(temperature=1e-310), 20)) == {1}
