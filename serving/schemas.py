"""The HTTP schema: pydantic models for every request and response body, so ``/openapi.json`` is what the
server really accepts and returns. Unknown fields are refused (422), which turns a misspelt option into an
error instead of a silently ignored setting."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from adamix_deploy.exporters.export_folder import ADAPTER_NAME_PATTERN, TASKS

Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Stop = str | Annotated[list[str], Field(max_length=8)] | None
TextPair = Annotated[list[str], Field(min_length=2, max_length=2)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    """Every error, on every route (the shape the OpenAI clients read)."""

    error: ErrorDetail


# -- health ----------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, bool]
    error: str | None = None


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


# -- adapters (onnxruntime LoRA adapters of a base folder) -----------------------------------------------
class LoadAdapterRequest(Strict):
    path: str = Field(description="An adapter folder on the server (written by adamix-export --adapter-of).")
    name: str | None = Field(
        None,
        pattern=ADAPTER_NAME_PATTERN,
        description="The model name to serve it under (default: the adapter's).",
    )
    base: str | None = Field(None, description="The base it runs on; may be left out when there is one base.")


class UnloadAdapterResponse(BaseModel):
    id: str
    deleted: bool = True
    drained: bool = Field(description="Whether every request in flight on it finished before it was unloaded.")


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


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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


# -- OpenAI-compatible -----------------------------------------------------------------------------------
class StreamOptions(Strict):
    include_usage: bool = False


class OpenAIFields(Strict):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Extension: 0 means no top-k cut.")
    n: Literal[1] = Field(1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None
    presence_penalty: Literal[0] = Field(0, description="Accepted for compatibility; only 0.")
    frequency_penalty: Literal[0] = Field(0, description="Accepted for compatibility; only 0.")


class CompletionRequest(OpenAIFields):
    prompt: str
    max_tokens: int = Field(16, ge=1)
    echo: Literal[False] = False
    logprobs: None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatRequest(OpenAIFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
