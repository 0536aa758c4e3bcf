"""The decode and speed protocols every generation peer runs, in whichever environment it runs (the project's
venv, llama.cpp's at .peers/llama): standard library only, imported by the peer scripts from this folder, so
that the peers decode, time and stop alike. Nothing of adamix_deploy. Each peer supplies one `Step`.

- Decode: every prompt alone, greedy, at most ``max_new_tokens`` new tokens, cut before the first eos.
- Bare speed (concurrency 1, as `benchmarks.generation_frontier`'s ``bare``): each prompt decodes exactly
  ``tokens`` new tokens (eos ignored), after one warm-up; a rate is tokens / the decode's wall time (its prompt
  forward pass included), the figure the median rate over ``repeats`` rounds of every prompt; the first-token
  time is the prompt's forward pass and the choice of its first token (median).
- Batched speed (concurrency N > 1, against the ``engine``'s N closed-loop clients): the prompts in static
  batches of N decoded together, at most ``tokens`` new tokens each, eos ending a row (the batch runs until its
  last row ends); tokens/s = the rows' tokens before eos / the batches' wall time, the median over ``repeats``
  rounds; the first-token time is a batch's prompt forward pass (median).
Peak RSS is the process's (getrusage), so every measurement runs in a fresh process.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence

# step(batch, new_tokens, eos) decodes the prompts of ``batch`` together, greedily: ``new_tokens`` new ids each
# when eos is None, else at most that many, a row ending at eos. It returns the seconds from its call to the
# batch's first new tokens and each row's new ids (anything after a row's eos is ignored).
Step = Callable[[list[list[int]], int, "set[int] | None"], tuple[float, list[list[int]]]]


def until_eos(tokens: list[int], eos: set[int] | None) -> list[int]:
    """The ids before the first eos: what a decode records and what a batched round counts."""
    eos = eos or set()
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def decode(step: Step, prompts: Sequence[list[int]], max_new_tokens: int, eos: set[int]) -> dict:
    started = time.perf_counter()
    outputs = [until_eos(step([prompt], max_new_tokens, eos)[1][0], eos) for prompt in prompts]
    return {"outputs": outputs, "seconds": round(time.perf_counter() - started, 1)}


def bare_speed(step: Step, prompts: Sequence[list[int]], tokens: int, repeats: int) -> dict:
    step([prompts[0]], 4, None)  # warm-up: thread pools, allocators, caches
    rates, firsts = [], []
    for _ in range(repeats):
        for prompt in prompts:
            started = time.perf_counter()
            first, _ = step([prompt], tokens, None)
            rates.append(tokens / (time.perf_counter() - started))
            firsts.append(first)
    return {"tokens_per_s": statistics.median(rates), "first_token_ms": 1000 * statistics.median(firsts),
            "peak_rss_mib": peak_rss_mib(), "rounds": [round(r, 2) for r in rates]}  # fmt: skip


def batched_speed(
    step: Step, prompts: Sequence[list[int]], concurrency: int, tokens: int, eos: set[int], repeats: int
) -> dict:
    batches = [list(prompts[i : i + concurrency]) for i in range(0, len(prompts), concurrency)]
    step(batches[0], 4, eos)  # warm-up
    rounds, firsts = [], []
    for _ in range(repeats):
        generated, elapsed = 0, 0.0
        for batch in batches:
            started = time.perf_counter()
            first, rows = step(batch, tokens, eos)
            elapsed += time.perf_counter() - started
            generated += sum(len(until_eos(row[:tokens], eos)) for row in rows)
            firsts.append(first)
        rounds.append(generated / elapsed)
    return {"tokens_per_s": statistics.median(rounds), "first_token_ms": 1000 * statistics.median(firsts),
            "peak_rss_mib": peak_rss_mib(), "rounds": [round(r, 2) for r in rounds]}  # fmt: skip


def speed(step: Step, prompts: Sequence[list[int]], concurrency: int, tokens: int, eos: set[int], repeats: int):
    """Bare speed at concurrency 1, batched speed above."""
    if concurrency == 1:
        return bare_speed(step, prompts, tokens, repeats)
    return batched_speed(step, prompts, concurrency, tokens, eos, repeats)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
