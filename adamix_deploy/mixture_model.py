"""Load a base model for a task and put a mixture into it: the one place that builds trainable models."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import ModelError
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


@dataclass(frozen=True)
class LoadedModel:
    """A base model as loaded for a task, and what became of the task head the folder may already have."""

    model: torch.nn.Module
    head: list[str]  # the task head's parameters: everything outside the base model (classifier, score ...)
    new: list[str]  # of the model's parameters, those the folder did not have (initialised here)
    reinitialised: list[str]  # those the folder had with another shape: dropped and initialised here


def load_base_model(path: Path, task: str, labels: list[str] | None, tokenizer) -> LoadedModel:
    """The base model with its task head. A head the folder already has is kept when it fits the task (the
    number of labels) and re-initialised when it does not (transformers' ``ignore_mismatched_sizes``)."""
    # Loading messages (a new head, unused weights, sharding notes) are expected here: keep them quiet.
    transformers_logging.set_verbosity_error()
    try:
        if task == "regression":  # one output, trained with MSE (transformers' problem_type "regression")
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=1,
                problem_type="regression",
                pad_token_id=tokenizer.pad_token_id,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
        elif task == "classification":
            assert labels is not None
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                problem_type="single_label_classification",
                pad_token_id=tokenizer.pad_token_id,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
        else:
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load a {task} model from {path}: {str(e).splitlines()[0]}") from None
    parameter_names = [name for name, _ in model.named_parameters()]
    # transformers 4 lists mismatched keys as names, 5 as (name, shape in the folder, shape here)
    mismatched = {key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", [])}
    new = sorted(name for name in info["missing_keys"] if name in parameter_names and name not in mismatched)
    reinitialised = sorted(name for name in mismatched if name in parameter_names)
    if task == "generation":
        head = new + reinitialised  # a language model's head is its pretrained LM head: trained only when new
    else:
        prefix = model.base_model_prefix + "."
        head = [name for name in parameter_names if not name.startswith(prefix)]
    return LoadedModel(model.float(), sorted(head), new, reinitialised)


def choose_head(loaded: LoadedModel, train_pooler: bool, freeze_head: bool) -> list[str]:
    """The head parameters that train: the whole task head, as PEFT's ``modules_to_save`` trains a
    classifier, whether the folder had one or not (so the checkpoint stores it); with ``freeze_head``, none
    of a head the folder already had (it must have had all of it, in the right shape); with ``train_pooler``,
    the pooler's dense layer too."""
    head = list(loaded.head)
    if freeze_head:
        new = [name for name in head if name in loaded.new]
        refitted = [name for name in head if name in loaded.reinitialised]
        if new or refitted or not head:
            why = (
                f"the folder has no {', '.join(new)}" if new
                else f"{', '.join(refitted)} do not fit this task's labels" if refitted
                else "this model has no task head"
            )  # fmt: skip
            raise ModelError(f"--freeze-head keeps the model folder's task head, but {why}: the head must train")
        head = []
    if train_pooler:
        names = [n for n, _ in loaded.model.named_parameters()]
        head += [n for n in names if POOLER_PATTERN.search(n) and n not in head]
    return sorted(head)


def head_notice(loaded: LoadedModel) -> str | None:
    """One line for a head the folder had in another shape (dropped and re-initialised), else None."""
    if not loaded.reinitialised:
        return None
    return (
        f"notice: the model folder's task head does not fit this task's labels; re-initialised "
        f"{', '.join(loaded.reinitialised)} (now {loaded.model.config.num_labels} output"
        f"{'s' if loaded.model.config.num_labels != 1 else ''})"
    )


def build_mixture_model(
    path: Path,
    task: str,
    labels: list[str] | None,
    spec: MixtureSpec,
    tokenizer,
    head: list[str] | None = None,
    train_pooler: bool = False,
    freeze_head: bool = False,
    notice: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, list[str], MixtureSpec]:
    """Base model + mixture modules, base frozen: only the mixture parameters and the task head train, and
    they are exactly the tensors a checkpoint stores. Returns the model, the head's parameter names (``head``
    given: those of a checkpoint; else `choose_head`, and a re-initialised head is reported to
    ``notice``) and ``spec`` with the names of the modules it wrapped (`inject_mixture`). BERT's pooler is pretrained, and for a sentence-embedding model such as MiniLM never
    task-trained; the official RoBERTa head trains its dense layer, which is new there anyway; models that pool
    the last token (GPT-2, Llama, OPT classifiers) have no pooler to add."""
    loaded = load_base_model(path, task, labels, tokenizer)
    model = loaded.model
    if head is None:
        head = choose_head(loaded, train_pooler, freeze_head)
        line = head_notice(loaded)
        if line and notice:
            notice(line)
    spec = inject_mixture(model, spec)
    freeze_all_but(model, set(mixture_parameter_names(model)) | set(head))
    return model, head, spec
