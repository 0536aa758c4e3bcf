"""The wire format of the OpenAI-compatible routes (`adamix_deploy.serving.openai.routes`): the bodies and
answers of OpenAI's completions and chat completions API, including the streaming chunks, so the `openai`
client reads them unchanged. Unknown fields are refused (422), as on every API (`Strict`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from adamix_deploy.serving.http.schemas import Seed, Stop, Strict, Usage


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
