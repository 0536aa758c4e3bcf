"""Load a base model for a task and put a mixture into it: the one place that builds trainable models."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from adamix_deploy.config import MixtureSpec
from adamix_deploy.errors import ModelError
from adamix_deploy.inject import freeze_all_but, inject_mixture, mixture_parameter_names

POOLER_PATTERN = re.compile(r"(^|\.)pooler\.dense\.(weight|bias)$")


def load_tokenizer(path: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    path: Path, task: str, labels: list[str] | None, tokenizer
) -> tuple[torch.nn.Module, list[str]]:
    """The base model with its task head; returns it and the names of newly initialised (head) parameters."""
    # Loading messages (a new head, unused weights, sharding notes) are expected here: keep them quiet.
    transformers_logging.set_verbosity_error()
    try:
        if task == "regression":  # one output, trained with MSE (transformers' problem_type "regression")
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=1,
                problem_type="regression",
                pad_token_id=tokenizer.pad_token_id,
                output_loading_info=True,
            )
        elif task == "classification":
            assert labels is not None
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                pad_token_id=tokenizer.pad_token_id,
                output_loading_info=True,
            )
        else:
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load a {task} model from {path}: {str(e).splitlines()[0]}") from None
    parameter_names = {name for name, _ in model.named_parameters()}
    head = sorted(name for name in info["missing_keys"] if name in parameter_names)
    return model.float(), head


def build_mixture_model(
    path: Path,
    task: str,
    labels: list[str] | None,
    spec: MixtureSpec,
    tokenizer,
    head: list[str] | None = None,
    train_pooler: bool = False,
) -> tuple[torch.nn.Module, list[str]]:
    """Base model + mixture modules, base frozen: only the mixture parameters and the task head train, and
    they are exactly the tensors a checkpoint stores. Returns the model and the head's parameter names
    (``head`` given: those of a checkpoint; else the parameters the base checkpoint did not have, plus the
    pooler's dense layer with ``train_pooler``). BERT's pooler is pretrained, and for a sentence-embedding
    model such as MiniLM never task-trained; the official RoBERTa head trains its dense layer, which is new
    there anyway; models that pool the last token (GPT-2, Llama, OPT classifiers) have no pooler to add."""
    model, new_head = load_base_model(path, task, labels, tokenizer)
    if head is None:
        head = new_head
        if train_pooler:
            head = sorted(
                head + [n for n, _ in model.named_parameters() if POOLER_PATTERN.search(n) and n not in head]
            )
    inject_mixture(model, spec)
    freeze_all_but(model, set(mixture_parameter_names(model)) | set(head))
    return model, head
