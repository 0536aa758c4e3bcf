"""Turn examples into token ids once, and ids into padded batches."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from adamix_deploy.data import ClassificationExample, GenerationExample

IGNORE_INDEX = -100  # label value that cross-entropy (and the consistency mask) skip


def model_input_names(model) -> set[str]:
    """Inputs the model's forward accepts: tokenizers may emit more (token_type_ids for models without them)."""
    return set(inspect.signature(model.forward).parameters)


def encode_classification(
    tokenizer,
    examples: Sequence[ClassificationExample],
    labels: list[str] | None,
    max_length: int,
    accepted: set[str] | None = None,
) -> list[dict]:
    """Token ids and the target: the label's index, or (``labels`` None: regression) the score as a float."""
    if not examples:
        return []
    label_ids = {label: i for i, label in enumerate(labels)} if labels is not None else None
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = [k for k in encoded.keys() if accepted is None or k in accepted]
    return [
        {**{k: encoded[k][i] for k in keys}, "labels": label_ids[e.label] if label_ids else float(e.label)}
        for i, e in enumerate(examples)
    ]


def encode_generation(
    tokenizer, examples: Sequence[GenerationExample], template: str, max_length: int
) -> list[dict]:
    """Prompt tokens are context (label ignored); target tokens and a closing eos are what the model learns."""
    items = []
    for e in examples:
        prompt = tokenizer(template.format(prompt=e.prompt), add_special_tokens=False).input_ids
        target = tokenizer(e.target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (prompt + target)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + target)[:max_length]
        items.append({"input_ids": ids, "labels": labels})
    return items


def collate(
    items: Sequence[dict], pad_token_id: int, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; labels of padding are ignored. Tensors land on ``device`` (CPU if None)."""
    width = max(len(item["input_ids"]) for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        if key == "labels" and isinstance(items[0]["labels"], int | float):
            batch["labels"] = torch.tensor([item["labels"] for item in items])
            continue
        fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
        batch[key] = torch.tensor([item[key] + [fill] * (width - len(item[key])) for item in items])
    batch["attention_mask"] = torch.tensor(
        [[1] * len(item["input_ids"]) + [0] * (width - len(item["input_ids"])) for item in items]
    )
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def batched(items: Sequence, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
