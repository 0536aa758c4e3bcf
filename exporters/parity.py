"""Parity, on by default: the mixture in its merge routing (PyTorch) vs the merged PyTorch model vs each ONNX
file, on sample inputs. fp32 stages must agree within a tolerance, or the export fails naming the stage that
diverged; reduced-precision files (int8, fp16) report their measured agreement instead.

Reading order: the inputs (`parity_inputs`), the stages that produce logits or tokens (`check_classification`,
`check_generation`: PyTorch references, then the ONNX files through the same numpy loops the server runs), and
the comparisons (`classification_parity`, `generation_parity`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from adamix_deploy.collate import model_input_names
from adamix_deploy.contracts.checkpoint_format import CheckpointConfig
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.tasks import DEFAULT_PROMPT_TEMPLATE, SEQUENCE_TASKS
from adamix_deploy.data import group_references, read_generation, read_like_checkpoint
from adamix_deploy.serving.engine.onnx_loops import (
    ActiveAdapter,
    classify_logits,
    greedy_generate,
    open_session,
    sequence_logits,
)

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
    "name[The Mill], eatType[pub], food[English], area[city centre], familyFriendly[no]",
    "name[Alimentum], food[Chinese], priceRange[high], customer rating[1 out of 5], area[riverside]",
    "Describe the weather on a cold winter morning.",
    "name[Cotto], eatType[coffee shop], food[French], near[The Portland Arms]",
]


class ParityError(AdamixError):
    """A full-precision stage diverged from the mixture beyond the tolerance."""


# -- inputs ------------------------------------------------------------------------------------------------------
def parity_inputs(task: str, verify_file, config: CheckpointConfig, prompts: int = 4) -> list:
    """Classification and regression: (text, pair) tuples, the first 32 of ``verify_file`` or built-in
    sentences. Generation: ``prompts`` prompts laid out with the checkpoint's template, the first records of
    ``verify_file`` or built-in prompts (at most as many as there are)."""
    if task in SEQUENCE_TASKS:
        if verify_file:
            examples = read_like_checkpoint(verify_file, config)[:32]
            return [(e.text, e.text_pair) for e in examples]
        return [(s, None) for s in BUILTIN_SENTENCES]
    records = [p for p, _ in group_references(read_generation(verify_file))] if verify_file else BUILTIN_PROMPTS
    template = config.prompt_template or DEFAULT_PROMPT_TEMPLATE
    return [template.format(prompt=p) for p in records[:prompts]]


# -- stages: PyTorch references, then each ONNX file -------------------------------------------------------------
def check_classification(
    model, merged, tokenizer, onnx_files: dict[str, object], samples: list, reduced_precision: set[str],
    tolerance: float, max_length: int, adapter=None,
) -> dict:  # fmt: skip
    """The mixture (reference), the merged PyTorch model and each ONNX file on one padded batch; with
    ``adapter`` (an `.onnx_adapter` file) active in every ONNX run. (For a regression head the top-1 agreement
    is trivially 1: the logit difference is the figure that counts.)"""
    texts = [t for t, _ in samples]
    pairs = [p for _, p in samples] if samples[0][1] is not None else None
    pt = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    np_batch = {k: v.numpy() for k, v in pt.items()}
    accepted = model_input_names(model)
    pt = {k: v for k, v in pt.items() if k in accepted}

    def torch_stage(m):
        return lambda: m(**pt).logits.detach().float().numpy()

    stages = {"mixture_pytorch": torch_stage(model), "merged_pytorch": torch_stage(merged)}
    active = ActiveAdapter(adapter) if adapter else None  # alive in this frame while the stages run
    options = active.run_options if active else None
    for name, path in onnx_files.items():
        stages[name] = lambda path=path: classify_logits(open_session(path), np_batch, options)
    with torch.no_grad():
        return classification_parity(stages, reduced_precision, tolerance)


def check_generation(
    model, merged, tokenizer, onnx_files: dict[str, object], prompts: list[str], reduced_precision: set[str],
    tolerance: float, steps: int, adapter=None,
) -> dict:  # fmt: skip
    """Greedy decoding of each prompt by the mixture (reference), the merged model and each ONNX file (with
    ``adapter`` active, as in `check_classification`), and each stage's logits along the reference's tokens."""
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stages = {
        "mixture_pytorch": torch_decoder(model, eos, pad, steps),
        "merged_pytorch": torch_decoder(merged, eos, pad, steps),
    }
    active = ActiveAdapter(adapter) if adapter else None  # alive in this frame while the stages run
    options = active.run_options if active else None
    for name, path in onnx_files.items():
        session = open_session(path)
        stages[name] = DecoderStage(
            greedy=lambda prompt, session=session: greedy_generate(session, prompt, steps, eos, options)[0],
            logits=lambda sequence, session=session: sequence_logits(session, sequence, options),
        )
    with torch.no_grad():
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


class DecoderStage(NamedTuple):
    """A decoder under test: its own greedy tokens for a prompt (up to eos), and its logits at every position
    of a given token sequence (teacher forcing)."""

    greedy: Callable[[list[int]], list[int]]
    logits: Callable[[list[int]], np.ndarray]


def generation_parity(
    stages: dict[str, DecoderStage],
    prompts: list[list[int]],
    reduced_precision: set[str],
    tolerance: float,
    steps: int,
) -> dict:
    """The first stage is the reference. Each other stage is compared two ways: its own greedy tokens against
    the reference's (the share of prompts decoded identically, and the step where each first diverges), and its
    logits along the reference's tokens, so that every step is compared even after greedy outputs part (max
    |Δlogit| over all steps and at the first, and the share of steps whose next-token choice agrees). Full
    precision must decode every prompt identically with the first step within ``tolerance``."""
    names = list(stages)
    reference = stages[names[0]]
    ref_tokens = [reference.greedy(p) for p in prompts]
    # the positions that predict each reference token, and the one after the last
    sequences = [(p + t, len(p) - 1) for p, t in zip(prompts, ref_tokens, strict=True)]
    ref_logits = [reference.logits(seq)[start:] for seq, start in sequences]
    report = {
        "reference": names[0], "prompts": len(prompts), "greedy_steps": steps, "tolerance": tolerance,
        "steps_compared": sum(len(r) for r in ref_logits), "stages": {},
    }  # fmt: skip
    for name in names[1:]:
        stage = stages[name]
        tokens = [stage.greedy(p) for p in prompts]
        divergence = [_first_difference(t, r) for t, r in zip(tokens, ref_tokens, strict=True)]
        logits = [stage.logits(seq)[start:] for seq, start in sequences]
        diff = max(
            float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(logits, ref_logits, strict=True)
        )
        first = max(
            float(np.max(np.abs(a[0].astype(np.float64) - b[0]))) for a, b in zip(logits, ref_logits, strict=True)
        )
        agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(logits, ref_logits, strict=True)])
        result = {
            "max_abs_logit_diff": diff,
            "first_step_max_abs_logit_diff": first,
            "greedy_tokens_identical": float(np.mean([d is None for d in divergence])),
            "first_divergence_step": divergence,
            "next_token_agreement": float(agree.mean()),
        }
        report["stages"][name] = result
        identical = sum(d is None for d in divergence)
        # the gate is the first step's logits (after the prompt) and the tokens: later steps add float
        # summation-order noise of their own (7e-5 after 32 SmolLM2 steps), which the tokens already judge
        if name not in reduced_precision and (first > tolerance or identical < len(prompts)):
            raise ParityError(
                f"parity failed at stage {name}: first-step max |Δlogit| {first:.2e} vs {names[0]} (tolerance "
                f"{tolerance:g}), greedy tokens identical for {identical}/{len(prompts)} prompts over {steps} steps"
            )
    return report


def _first_difference(tokens: list[int], reference: list[int]) -> int | None:
    """The first step where two greedy outputs differ (a length difference counts), or None if identical."""
    for step, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return step
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def reduced_precision_warnings(report: dict, files: dict[str, str], threshold: float) -> list[str]:
    """One plain line per reduced-precision file whose choices agree with the reference less than ``threshold``
    (top-1 per sample for encoders, next-token choice per step for decoders)."""
    lines = []
    for stage, result in report["stages"].items():
        precision = stage.removeprefix("onnx_")
        if precision == "fp32" or precision not in files:
            continue
        if "next_token_agreement" in result:
            agreement, unit = (
                result["next_token_agreement"],
                f"next-token choices over {report['steps_compared']} steps",
            )
            diverged = sum(d is not None for d in result["first_divergence_step"])
            detail = f"; greedy output differs on {diverged}/{report['prompts']} prompts"
        else:
            agreement, unit, detail = result["top1_agreement"], f"predictions on {report['samples']} samples", ""
        if agreement < threshold:
            lines.append(
                f"warning: {files[precision]} agrees with {report['reference']} on {100 * agreement:.1f}% of its "
                f"{unit} (below {100 * threshold:g}%){detail}, max |Δlogit| {result['max_abs_logit_diff']:.3g}: "
                "check its quality on your own data before serving it"
            )
    return lines


def torch_decoder(model, eos_token_id: int | None, pad_token_id: int, steps: int) -> DecoderStage:
    """A PyTorch causal LM as a parity stage: `generate`'s greedy tokens (up to eos), and a forward pass."""

    def greedy(prompt_ids: list[int]) -> list[int]:
        ids = torch.tensor([prompt_ids])
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        )[0, ids.shape[1] :].tolist()  # fmt: skip
        return out[: out.index(eos_token_id)] if eos_token_id in out else out

    def logits(sequence: list[int]) -> np.ndarray:
        return model(input_ids=torch.tensor([sequence])).logits[0].float().numpy()

    return DecoderStage(greedy, logits)
