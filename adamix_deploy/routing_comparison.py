"""``adamix-eval``: what merging costs, measured before deploying.

Evaluates one checkpoint on a labelled file under several routings: ``average`` (what the export serves),
``ensemble`` (M times the cost), ``random`` (the training rule; seeded), and each ``expert:i``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adamix_deploy.collate import encode_classification, encode_generation, model_input_names
from adamix_deploy.data import read_classification, read_generation, seeded_subset
from adamix_deploy.evaluation import evaluate_classification, evaluate_generation_loss
from adamix_deploy.exporters.export_folder import DEFAULT_PROMPT_TEMPLATE
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
    config, model, tokenizer = ckpt.config, ckpt.model, ckpt.tokenizer
    experts = config["mixture"]["experts"]
    routings = routings or ["average", "ensemble", "random"] + [f"expert:{i}" for i in range(experts)]
    max_length = config.get("max_length") or 128
    if config["task"] == "classification":
        examples = seeded_subset(read_classification(data_file, labels=config["labels"]), max_examples, seed)
        items = encode_classification(tokenizer, examples, config["labels"], max_length, model_input_names(model))
    else:
        examples = seeded_subset(read_generation(data_file), max_examples, seed)
        items = encode_generation(
            tokenizer, examples, config.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE, max_length
        )
    results = {}
    for routing in routings:
        torch.manual_seed(seed)  # `random` routing draws from torch's generator
        if config["task"] == "classification":
            results[routing] = evaluate_classification(model, items, tokenizer.pad_token_id, routing)
        else:
            results[routing] = evaluate_generation_loss(model, items, tokenizer.pad_token_id, routing)
    return {
        "checkpoint": str(source),
        "task": config["task"],
        "examples": len(items),
        "seed": seed,
        "routings": results,
    }
