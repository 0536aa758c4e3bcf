"""What the runtime answers: plain result types, free of onnxruntime, so the demo's HTTP client mode can use
them without loading the runtime."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Classification:
    """A classification model's label and per-label probabilities, or a regression model's score."""

    label: str | None = None
    scores: dict[str, float] | None = None
    score: float | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


GenerationEvent = TextDelta | Finished | Failed
