"""Parity, on by default: the mixture in its merge routing (PyTorch) vs the merged PyTorch model vs each ONNX
file, on sample inputs. fp32 stages must agree within a tolerance, or the export fails naming the stage that
diverged; reduced-precision files (int8, fp16) report their measured agreement instead.

Reading order: the inputs (`parity_inputs`), the stages that produce logits or tokens (`check_classification`,
`check_generation`: PyTorch references, then the ONNX files through the same numpy loops the server runs), and
the comparisons (`classification_parity`, `generation_parity`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adamix_deploy.collate import model_input_names
from adamix_deploy.data import group_references, read_generation, read_like_checkpoint
from adamix_deploy.errors import AdamixError
from adamix_deploy.exporters.export_folder import DEFAULT_PROMPT_TEMPLATE, SEQUENCE_TASKS
from adamix_deploy.exporters.onnx_loops import classify_logits, greedy_generate, open_session

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


# -- inputs ------------------------------------------------------------------------------------------------------
def parity_inputs(task: str, verify_file, config: dict) -> list:
    """Classification and regression: (text, pair) tuples, the first 32 of ``verify_file`` or built-in
    sentences. Generation: prompts laid out with the checkpoint's template, the first 4 records or built-in
    prompts."""
    if task in SEQUENCE_TASKS:
        if verify_file:
            examples = read_like_checkpoint(verify_file, config)[:32]
            return [(e.text, e.text_pair) for e in examples]
        return [(s, None) for s in BUILTIN_SENTENCES]
    prompts = (
        [p for p, _ in group_references(read_generation(verify_file))[:4]] if verify_file else BUILTIN_PROMPTS
    )
    return [(config.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE).format(prompt=p) for p in prompts]


# -- stages: PyTorch references, then each ONNX file -------------------------------------------------------------
def check_classification(
    model, merged, tokenizer, onnx_files: dict[str, object], samples: list, reduced_precision: set[str],
    tolerance: float, max_length: int,
) -> dict:  # fmt: skip
    """The mixture (reference), the merged PyTorch model and each ONNX file on one padded batch. (For a
    regression head the top-1 agreement is trivially 1: the logit difference is the figure that counts.)"""
    texts = [t for t, _ in samples]
    pairs = [p for _, p in samples] if samples[0][1] is not None else None
    pt = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    np_batch = {k: v.numpy() for k, v in pt.items()}
    accepted = model_input_names(model)
    pt = {k: v for k, v in pt.items() if k in accepted}

    def torch_stage(m):
        return lambda: m(**pt).logits.detach().float().numpy()

    stages = {"mixture_pytorch": torch_stage(model), "merged_pytorch": torch_stage(merged)}
    for name, path in onnx_files.items():
        stages[name] = lambda path=path: classify_logits(open_session(path), np_batch)
    with torch.no_grad():
        return classification_parity(stages, reduced_precision, tolerance)


def check_generation(
    model, merged, tokenizer, onnx_files: dict[str, object], prompts: list[str], reduced_precision: set[str],
    tolerance: float, steps: int,
) -> dict:  # fmt: skip
    """Greedy decoding of each prompt by the mixture (reference), the merged model and each ONNX file."""
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stages = {
        "mixture_pytorch": torch_greedy(model, eos, pad, steps),
        "merged_pytorch": torch_greedy(merged, eos, pad, steps),
    }
    for name, path in onnx_files.items():
        session = open_session(path)
        stages[name] = lambda prompt, session=session: greedy_generate(session, prompt, steps, eos)
    return generation_parity(stages, ids, reduced_precision, tolerance, steps)


# -- comparisons -------------------------------------------------------------------------------------------------


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
