"""The wire format of the KServe v2 / Open Inference Protocol routes (`adamix_deploy.serving.kserve.routes`):
pydantic models for the health, server and model metadata answers, the inference request and response, and the
protocol's error body ``{"error": "message"}``. Field names and shapes follow the protocol's REST spec
(https://github.com/kserve/open-inference-protocol, ``inference_rest.md``) and what `tritonclient` sends."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# The spec's $parameters: names to a string, number or boolean. Servers may define their own; we read
# `binary_data_output` and `binary_data` (the binary tensor extension) and `truncate`, and ignore the rest
# (tritonclient sends `timeout`, `priority` and others that mean nothing to a classifier).
Parameters = dict[str, str | int | float | bool]


class KServeError(BaseModel):
    """Every error on a /v2 route: the protocol's error object, which KServe and Triton clients read."""

    error: str


# -- health and metadata ----------------------------------------------------------------------------------
class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 is a variable-size dimension.")


class ModelMetadata(BaseModel):
    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = Field(
        description="Server-specific: `task`, `labels` (the order of the `scores` columns, a JSON list as a "
        "string, since a parameter value cannot be a list), `max_inputs`, `max_tokens`."
    )


# -- inference --------------------------------------------------------------------------------------------
class Strict(BaseModel):
    # like the native routes: a misspelt field is a 422, not a silently ignored setting
    model_config = ConfigDict(extra="forbid")


class RequestInput(Strict):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        None,
        description="The tensor's elements in row-major order: flat, or nested as the shape. Absent when "
        "`parameters.binary_data_size` says the elements follow the JSON (binary tensor extension).",
    )


class RequestOutput(Strict):
    name: str
    parameters: Parameters | None = None


class InferRequest(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["great", "dull"]}],
                    "outputs": [{"name": "label"}],
                }
            ]
        },
    )

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="Which outputs to return; all when absent.")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[str] | list[float] | None = Field(None, description="Flat, row-major; absent for binary outputs.")


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]
