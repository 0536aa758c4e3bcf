"""``adamix-eval``: what merging costs, measured before deploying.

Evaluates one checkpoint on a labelled file under several routings: ``average`` (what the export serves),
``ensemble`` (M times the cost), ``random`` (the training rule; seeded), and each ``expert:i``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adamix_deploy.checkpoint import MixtureCheckpoint
from adamix_deploy.collate import encode_classification, encode_generation, model_input_names
from adamix_deploy.contracts.tasks import DEFAULT_PROMPT_TEMPLATE, SEQUENCE_TASKS
from adamix_deploy.data import read_like_checkpoint, seeded_subset
from adamix_deploy.evaluation import evaluate_classification, evaluate_generation_loss, evaluate_regression
from adamix_deploy.importers import detect_and_load


def evaluate_routings(
    source: str | Path,
    data_file: str | Path,
    routings: list[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    base_model: str | None = None,
) -> dict:
    ckpt = detect_and_load(Path(source), base_model)
    return {"checkpoint": str(source), **compare_routings(ckpt, data_file, routings, max_examples, seed)}


def compare_routings(
    ckpt: MixtureCheckpoint,
    data_file: str | Path,
    routings: list[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> dict:
    """The checkpoint's metrics on ``data_file`` under each routing (default: average, ensemble, random and
    every expert). Leaves the model in ``eval`` mode with the last routing set."""
    config, model, tokenizer = ckpt.config, ckpt.model, ckpt.tokenizer
    task = config.task
    experts = config.mixture["experts"]
    routings = routings or ["average", "ensemble", "random"] + [f"expert:{i}" for i in range(experts)]
    max_length = config.max_length
    examples = seeded_subset(read_like_checkpoint(data_file, config), max_examples, seed)
    if task in SEQUENCE_TASKS:
        items = encode_classification(tokenizer, examples, config.labels, max_length, model_input_names(model))
    else:
        items = encode_generation(
            tokenizer, examples, config.prompt_template or DEFAULT_PROMPT_TEMPLATE, max_length
        )
    evaluate = {
        "classification": evaluate_classification,
        "regression": evaluate_regression,
        "generation": evaluate_generation_loss,
    }[task]
    results = {}
    for routing in routings:
        torch.manual_seed(seed)  # `random` routing draws from torch's generator
        results[routing] = evaluate(model, items, tokenizer.pad_token_id, routing)
    return {"task": task, "data_file": str(data_file), "examples": len(items), "seed": seed, "routings": results}
