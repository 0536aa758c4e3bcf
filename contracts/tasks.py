"""The tasks every stage knows, and how a generation input is laid out by default."""

from __future__ import annotations

TASKS = ("classification", "regression", "generation")
SEQUENCE_TASKS = ("classification", "regression")  # one forward pass over an input text (or pair)
# How a generation model's input is laid out when a checkpoint names no template: the record, then a newline.
DEFAULT_PROMPT_TEMPLATE = "{prompt}\n"
