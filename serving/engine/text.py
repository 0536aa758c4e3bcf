"""Text in and out of token ids for the server: classification inputs, generation prompts and chat messages,
and incremental detokenisation for streaming. Uses the ``tokenizers`` library only (no transformers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class InputTooLong(ValueError):
    """An input over the model's token limit, with truncation not requested."""


@dataclass(frozen=True)
class EncodedInput:
    ids: list[int]
    type_ids: list[int]


def encode_for_classification(
    tokenizer: Tokenizer, truncating: Tokenizer, inputs: list, max_tokens: int, truncate: bool
) -> list[EncodedInput]:
    """Texts or (text, text) pairs to ids with the model's special tokens. Over-long inputs raise
    `InputTooLong` naming the first offender, unless ``truncate``."""
    batch = [tuple(x) if isinstance(x, list) else x for x in inputs]
    encodings = (truncating if truncate else tokenizer).encode_batch(batch)
    for i, enc in enumerate(encodings):
        if len(enc.ids) > max_tokens:
            raise InputTooLong(
                f"inputs[{i}] is {len(enc.ids)} tokens; this model takes at most {max_tokens} "
                '(send "truncate": true to cut it)'
            )
    return [EncodedInput(enc.ids, enc.type_ids) for enc in encodings]


def pad_batch(items: list[EncodedInput], pad_token_id: int) -> dict[str, np.ndarray]:
    """Right-pad to the longest item in the batch (not to the model's maximum: short batches stay cheap)."""
    width = max(len(item.ids) for item in items)
    ids = np.full((len(items), width), pad_token_id, dtype=np.int64)
    type_ids = np.zeros((len(items), width), dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : len(item.ids)] = item.ids
        type_ids[row, : len(item.ids)] = item.type_ids
        mask[row, : len(item.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


_jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


def _raise(message: str):
    raise TemplateError(message)


_jinja.globals["raise_exception"] = _raise


def render_chat(
    messages: list[dict], chat_template: str | None, prompt_template: str | None, specials: dict
) -> str:
    """Chat messages to one prompt string.

    The export's ``prompt_template`` wins: it is the format the adaptation was fine-tuned on, and a chat
    template the base model knows would put the fine-tuned model off its training distribution. Without one
    the tokenizer's chat template is rendered (sandboxed, as transformers does); without either, the messages'
    texts are joined by newlines.
    """
    if prompt_template:
        text = "\n".join(m["content"] for m in messages if m["role"] != "system")
        return prompt_template.format(prompt=text)
    if chat_template:
        template = _jinja.from_string(chat_template)
        return template.render(messages=messages, add_generation_prompt=True, **specials)
    return "\n".join(m["content"] for m in messages) + "\n"


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas. Holds back text that may still change: an
    incomplete UTF-8 sequence (decoded as U+FFFD) and a tail that could be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) - 1 for s in self.stop), default=0)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already sent
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; returns (new text safe to send, whether a stop string was reached)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [at for at in (self.text.find(s) for s in self.stop) if at != -1]
        if hits:  # the earliest occurrence wins, whatever the order of the stop list
            self.text = self.text[: min(hits)]
            return self._take(len(self.text)), True
        if self.text.endswith("\ufffd"):
            return "", False
        return self._take(len(self.text) - self.hold), False

    def flush(self) -> str:
        """The held-back rest, at the end of generation."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return delta
