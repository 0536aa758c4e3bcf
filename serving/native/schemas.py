"""The wire format of the native routes (`adamix_deploy.serving.native.routes`): pydantic models for the model
list, classification and generation bodies. Unknown fields are refused (422), as on every API (`Strict`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from adamix_deploy.contracts.tasks import TASKS
from adamix_deploy.serving.http.schemas import Seed, Stop, Strict, Usage

TextPair = Annotated[list[str], Field(min_length=2, max_length=2)]


# -- models ----------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    task: Literal[TASKS]  # type: ignore[valid-type]  # a tuple subscript is Literal["classification", ...]
    labels: list[str] | None
    base_model: str | None
    method: str | None
    experts: int | None
    merge_method: str | None
    trainable_share: float | None
    parity: dict | None
    onnx_file: str
    onnx_bytes: int | None
    max_tokens: int
    providers: list[str]
    ready: bool
    parent: str | None = None  # an onnxruntime LoRA adapter: the base model it runs on


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- classification --------------------------------------------------------------------------------------
class ClassifyRequest(Strict):
    inputs: Annotated[list[str | TextPair], Field(min_length=1)] = Field(
        description="Texts, or [first, second] pairs for pair tasks (premise and hypothesis, ...)."
    )
    truncate: bool = Field(False, description="Cut inputs over the model's token limit instead of refusing them.")


class ClassifyResult(BaseModel):
    """Classification models answer ``label`` and ``scores``; regression models (STS-B style) ``score``."""

    label: str | None = Field(None, description="The most probable label (classification models).")
    scores: dict[str, float] | None = Field(None, description="Each label's probability (classification models).")
    score: float | None = Field(None, description="The predicted value (regression models).")


class ClassifyUsage(BaseModel):
    input_tokens: int


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]
    usage: ClassifyUsage


# -- generation ------------------------------------------------------------------------------------------
class SamplingFields(Strict):
    temperature: float = Field(0.0, ge=0, le=5, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut.")
    stop: Stop = Field(None, description="Generation ends before the first occurrence of any of these.")
    seed: Seed | None = Field(None, description="Makes sampling repeatable.")


class GenerateRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_new_tokens: int = Field(64, ge=1)
    stream: bool = Field(False, description="Server-sent events, one per text piece; one prompt only.")
    apply_template: bool = Field(True, description="Format the prompt with the export's prompt template.")
    truncate: bool = Field(False, description="Keep the end of a prompt over the token limit.")


class GenerateOutput(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


class GenerateResponse(BaseModel):
    model: str
    outputs: list[GenerateOutput]
    usage: Usage


class GenerateStreamEvent(BaseModel):
    """One server-sent event of ``"stream": true``; the last has ``finish_reason`` and ``usage``; then
    ``data: [DONE]``."""

    text: str
    finish_reason: Literal["stop", "length"] | None = None
    usage: Usage | None = None
