"""Parity, on by default: the mixture in its merge routing (PyTorch) vs the merged PyTorch model vs each ONNX
file, on sample inputs. fp32 stages must agree within a tolerance, or the export fails naming the stage that
diverged; reduced-precision files (int8, fp16) report their measured agreement instead."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adamix_deploy.errors import AdamixError

BUILTIN_SENTENCES = [
    "A warm, funny and beautifully acted film.",
    "The plot was thin and the pacing painfully slow.",
    "I would not recommend this to anyone.",
    "An instant classic that I will watch again.",
    "It was fine, nothing special.",
    "The battery died after two hours and support never answered.",
    "Surprisingly good for the price.",
    "Bland food, rude staff, long wait.",
]
BUILTIN_PROMPTS = [
    "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], area[riverside]",
    "name[Blue Spice], eatType[pub], food[Italian], customer rating[high], near[Rainbow Vegetarian Café]",
    "name[Zizzi], eatType[restaurant], priceRange[moderate], familyFriendly[yes]",
    "Write one sentence about a quiet library.",
]


class ParityError(AdamixError):
    """A full-precision stage diverged from the mixture beyond the tolerance."""


def _compare(reference: np.ndarray, other: np.ndarray) -> dict:
    return {
        "max_abs_logit_diff": float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64)))),
        "top1_agreement": float(np.mean(reference.argmax(-1) == other.argmax(-1))),
    }


def classification_parity(
    stages: dict[str, Callable[[], np.ndarray]], reduced_precision: set[str], tolerance: float
) -> dict:
    """``stages`` maps a stage name to a function returning its logits on the sample batch; the first stage
    is the reference (the mixture in its merge routing)."""
    names = list(stages)
    reference = stages[names[0]]()
    report = {"reference": names[0], "samples": int(reference.shape[0]), "tolerance": tolerance, "stages": {}}
    for name in names[1:]:
        result = _compare(reference, stages[name]())
        report["stages"][name] = result
        if name not in reduced_precision and (
            result["max_abs_logit_diff"] > tolerance or result["top1_agreement"] < 1.0
        ):
            raise ParityError(
                f"parity failed at stage {name}: max |Δlogit| {result['max_abs_logit_diff']:.2e} vs {names[0]} "
                f"(tolerance {tolerance:g}), top-1 agreement {result['top1_agreement']:.3f}"
            )
    return report


def generation_parity(
    stages: dict[str, Callable[[list[int]], tuple[list[int], np.ndarray]]],
    prompts: list[list[int]],
    reduced_precision: set[str],
    tolerance: float,
    steps: int,
) -> dict:
    """Each stage greedily decodes ``steps`` tokens per prompt and returns (tokens, first-step logits)."""
    names = list(stages)
    outputs = {name: [stages[name](ids) for ids in prompts] for name in names}
    reference = outputs[names[0]]
    report = {
        "reference": names[0], "prompts": len(prompts), "greedy_steps": steps, "tolerance": tolerance, "stages": {}
    }  # fmt: skip
    for name in names[1:]:
        same = [
            tokens == ref_tokens for (tokens, _), (ref_tokens, _) in zip(outputs[name], reference, strict=True)
        ]
        diff = max(
            float(np.max(np.abs(logits.astype(np.float64) - ref_logits.astype(np.float64))))
            for (_, logits), (_, ref_logits) in zip(outputs[name], reference, strict=True)
        )
        result = {"max_abs_logit_diff": diff, "greedy_tokens_identical": float(np.mean(same))}
        report["stages"][name] = result
        if name not in reduced_precision and (diff > tolerance or not all(same)):
            raise ParityError(
                f"parity failed at stage {name}: max |Δlogit| {diff:.2e} vs {names[0]} (tolerance {tolerance:g}), "
                f"greedy tokens identical for {sum(same)}/{len(same)} prompts over {steps} steps"
            )
    return report


def torch_greedy(model, eos_token_id: int | None, pad_token_id: int, steps: int):
    """A stage function for a PyTorch causal LM: greedy tokens (up to eos) and first-step logits."""

    @torch.no_grad()
    def run(prompt_ids: list[int]) -> tuple[list[int], np.ndarray]:
        ids = torch.tensor([prompt_ids])
        first = model(input_ids=ids).logits[0, -1].float().numpy()
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        )[0, ids.shape[1] :].tolist()  # fmt: skip
        if eos_token_id in out:
            out = out[: out.index(eos_token_id)]
        return out, first

    return run
