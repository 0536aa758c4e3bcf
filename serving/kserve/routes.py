"""The KServe v2 / Open Inference Protocol routes, so KServe, Triton and tritonclient tooling can call
``adamix-serve`` directly: ``GET /v2/health/live`` and ``/v2/health/ready`` (`health_router`, open like the
probes), ``GET /v2`` (server metadata), ``GET /v2/models/{name}`` (model metadata), ``GET
/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer`` (`router`, behind the API key when there are keys).

Inference takes a BYTES tensor ``text`` of shape [N] (or [N, 1]) and optionally ``text_pair`` of the same shape,
and answers ``label`` (BYTES [N]) and ``scores`` (FP32 [N, num_labels], columns in the order of the metadata's
``labels`` parameter), or ``score`` (FP32 [N]) for a regression model. It goes through `ModelRuntime.classify`,
so batching, limits and errors are those of ``/v1/models/{name}/classify``. JSON tensor data may be flat or
nested as the shape; the binary tensor extension (``Inference-Header-Content-Length``, tritonclient's default)
works both ways (`adamix_deploy.serving.kserve.binary_tensors`). `KServeErrorShape`
(`adamix_deploy.serving.kserve.error_shape`) gives every error under ``/v2`` (these routes' paths and any unknown
one) the protocol's ``{"error": "message"}`` body, with the project's status codes."""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.serving.engine.results import Classification
from adamix_deploy.serving.engine.runtime import ModelRuntime
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.http.model_lookup import runtime_for
from adamix_deploy.serving.http.openapi import MODEL_ROUTE_ERRORS
from adamix_deploy.serving.kserve import schemas as k
from adamix_deploy.serving.kserve.binary_tensors import (
    BinaryTensorRoute,
    binary_slices,
    decode_bytes,
    encode_binary,
)
from adamix_deploy.serving.kserve.error_shape import kserve_error_docs

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models
TEXT, TEXT_PAIR = "text", "text_pair"


health_router = APIRouter(tags=["kserve"])
router = APIRouter(tags=["kserve"], route_class=BinaryTensorRoute)


# -- health and metadata ----------------------------------------------------------------------------------
@health_router.get("/v2/health/live", response_model=k.ServerLive)
async def server_live() -> k.ServerLive:
    return k.ServerLive(live=True)


@health_router.get(
    "/v2/health/ready",
    response_model=k.ServerReady,
    responses={503: {"model": k.ServerReady, "description": "Still loading, or loading failed."}},
)
async def server_ready(request: Request) -> JSONResponse:
    runtimes = request.app.state.runtimes
    ready = all(r.ready for r in runtimes.values()) and not request.app.state.load_errors
    return JSONResponse(k.ServerReady(ready=ready).model_dump(), status_code=200 if ready else 503)


@router.get("/v2", response_model=k.ServerMetadata)
async def server_metadata() -> k.ServerMetadata:
    try:
        server_version = version("adamix-deploy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        server_version = "unknown"
    # Triton's name for the binary tensor extension, so its clients recognise it
    return k.ServerMetadata(name="adamix-serve", version=server_version, extensions=["binary_tensor_data"])


@router.get("/v2/models/{name}", response_model=k.ModelMetadata, responses=kserve_error_docs(404))
async def model_metadata(name: str, request: Request) -> k.ModelMetadata:
    runtime = runtime_for(request, name)
    return _metadata(runtime, request.app.state.settings.max_inputs)


@router.get(
    "/v2/models/{name}/ready",
    response_model=k.ModelReady,
    responses={**kserve_error_docs(404), 503: {"model": k.ModelReady, "description": "Still loading."}},
)
async def model_ready(name: str, request: Request) -> JSONResponse:
    runtime = runtime_for(request, name)
    body = k.ModelReady(name=name, ready=runtime.ready)
    return JSONResponse(body.model_dump(), status_code=200 if runtime.ready else 503)


# -- inference --------------------------------------------------------------------------------------------
@router.post(
    "/v2/models/{name}/infer",
    response_model=k.InferResponse,
    response_model_exclude_none=True,  # no `id` without one in the request, no `data` on binary outputs
    responses={
        200: {
            "description": "JSON, or with binary outputs the JSON header (its length in the "
            "Inference-Header-Content-Length header) followed by the outputs' raw data.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **kserve_error_docs(*MODEL_ROUTE_ERRORS),
    },
)
async def infer(name: str, body: k.InferRequest, request: Request) -> k.InferResponse | Response:
    runtime = runtime_for(request, name)
    if runtime.model.task not in SEQUENCE_TASKS:
        raise ServeError(
            422,
            f"model {name!r} is a {runtime.model.task} model; /v2 inference serves classification and regression "
            f"models only. Generate with POST /v1/models/{name}/generate, /v1/completions or /v1/chat/completions",
        )
    parameters = body.parameters or {}
    inputs = _inputs(body.inputs, getattr(request.state, "binary", None))
    wanted = _requested_outputs(body, _output_names(runtime), name)
    results, _ = await runtime.classify(inputs, _flag(parameters, "truncate", False))
    tensors = _output_tensors(results, runtime)
    outputs, blobs = [], []
    for output, binary in wanted.items():
        datatype, shape, values = tensors[output]
        if binary:
            blob = encode_binary(datatype, values)
            blobs.append(blob)
            sizes = {"binary_data_size": len(blob)}
            outputs.append(k.ResponseOutput(name=output, shape=shape, datatype=datatype, parameters=sizes))
        else:
            outputs.append(k.ResponseOutput(name=output, shape=shape, datatype=datatype, data=values))
    response = k.InferResponse(model_name=name, id=body.id, outputs=outputs)
    if not blobs:
        return response
    header = response.model_dump_json(exclude_none=True).encode()
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _metadata(runtime: ModelRuntime, max_inputs: int) -> k.ModelMetadata:
    model = runtime.model
    parameters: dict = {"task": model.task, "max_inputs": max_inputs, "max_tokens": model.max_tokens}
    if model.task not in SEQUENCE_TASKS:
        # still described (it is served), but with no tensors: infer refuses it and names the routes to use
        parameters["routes"] = f"POST /v1/models/{model.name}/generate, /v1/completions, /v1/chat/completions"
        return k.ModelMetadata(name=model.name, platform=PLATFORM, inputs=[], outputs=[], parameters=parameters)
    inputs = [k.TensorMetadata(name=n, datatype="BYTES", shape=[-1]) for n in (TEXT, TEXT_PAIR)]
    parameters["optional_inputs"] = TEXT_PAIR
    if model.task == "regression":
        outputs = [k.TensorMetadata(name="score", datatype="FP32", shape=[-1])]
    else:
        parameters["labels"] = json.dumps(model.labels)  # a parameter value is a string, never a list
        outputs = [
            k.TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            k.TensorMetadata(name="scores", datatype="FP32", shape=[-1, len(model.labels)]),
        ]
    return k.ModelMetadata(
        name=model.name, platform=PLATFORM, inputs=inputs, outputs=outputs, parameters=parameters
    )


def _output_names(runtime: ModelRuntime) -> list[str]:
    return ["score"] if runtime.model.task == "regression" else ["label", "scores"]


def _output_tensors(
    results: list[Classification], runtime: ModelRuntime
) -> dict[str, tuple[str, list[int], list]]:
    """Every output as (datatype, shape, flat row-major values); FP32 values are rounded to float32 so the
    JSON and binary forms carry the same numbers."""
    n = len(results)
    if runtime.model.task == "regression":
        return {"score": ("FP32", [n], _fp32([r.score for r in results]))}
    labels = runtime.model.labels
    scores = _fp32([r.scores[label] for r in results for label in labels])
    return {"label": ("BYTES", [n], [r.label for r in results]), "scores": ("FP32", [n, len(labels)], scores)}


def _fp32(values: list[float]) -> list[float]:
    return np.asarray(values, dtype=np.float32).tolist()


def _flag(parameters: dict, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ServeError(422, f"parameter {key!r} must be true or false, not {value!r}")
    return value


def _inputs(tensors: list[k.RequestInput], binary: bytes | None) -> list:
    """The request's texts, or [text, text_pair] pairs, checked against what the model takes."""
    found: dict[str, list[str]] = {}
    for tensor, raw in zip(tensors, binary_slices(tensors, binary), strict=True):
        name = tensor.name
        if name not in (TEXT, TEXT_PAIR):
            takes = f"{TEXT!r} (BYTES, shape [N]) and optionally {TEXT_PAIR!r}"
            raise ServeError(422, f"unknown input {name!r}; this model takes {takes}")
        if name in found:
            raise ServeError(422, f"input {name!r} is given twice")
        if tensor.datatype != "BYTES":
            raise ServeError(422, f"input {name!r} has datatype {tensor.datatype}; it must be BYTES (UTF-8 text)")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ServeError(422, f"input {name!r} has shape {shape}; it must be [N] (or [N, 1]) for N texts")
        if "shared_memory_region" in (tensor.parameters or {}):
            raise ServeError(422, "shared-memory tensors are not supported; send the data in the request")
        count = math.prod(shape)
        found[name] = decode_bytes(raw, count, name) if raw is not None else _flatten(tensor.data, shape, name)
    if TEXT not in found:
        raise ServeError(422, f"the request has no {TEXT!r} input (BYTES, shape [N]: the texts to classify)")
    texts = found[TEXT]
    if not texts:
        raise ServeError(422, f"input {TEXT!r} is empty; send at least one text")
    if TEXT_PAIR not in found:
        return texts
    pairs = found[TEXT_PAIR]
    if len(pairs) != len(texts):
        raise ServeError(422, f"{TEXT!r} has {len(texts)} texts but {TEXT_PAIR!r} has {len(pairs)}; they pair up")
    return [[a, b] for a, b in zip(texts, pairs, strict=True)]


def _flatten(data: list | None, shape: list[int], name: str) -> list[str]:
    """JSON tensor data as a flat list: the spec allows it flat or nested as the shape (row-major either way)."""
    if data is None:
        raise ServeError(422, f"input {name!r} has no data (and no binary_data_size parameter)")
    flat = data
    if any(isinstance(x, list) for x in data):
        level = [data]
        for size in shape:  # descend one dimension at a time; every list must have that dimension's length
            if any(not isinstance(item, list) or len(item) != size for item in level):
                raise ServeError(422, f"input {name!r}: data is neither flat nor nested as the shape {shape}")
            level = [x for item in level for x in item]
        flat = level
    count = math.prod(shape)
    if len(flat) != count:
        raise ServeError(422, f"input {name!r} has {len(flat)} elements; its shape {shape} needs {count}")
    for i, x in enumerate(flat):
        if not isinstance(x, str):
            raise ServeError(422, f"input {name!r} element {i} is {json.dumps(x)[:40]}, not a string")
    return flat


def _requested_outputs(body: k.InferRequest, available: list[str], model: str) -> dict[str, bool]:
    """The outputs to return, in order, each with whether it goes binary (request-wide `binary_data_output`,
    overridden per output by `binary_data`)."""
    default_binary = _flag(body.parameters or {}, "binary_data_output", False)
    if body.outputs is None:
        return dict.fromkeys(available, default_binary)
    wanted: dict[str, bool] = {}
    for output in body.outputs:
        if output.name not in available:
            raise ServeError(422, f"unknown output {output.name!r}; model {model!r} has {', '.join(available)}")
        if output.name in wanted:
            raise ServeError(422, f"output {output.name!r} is requested twice")
        parameters = output.parameters or {}
        if parameters.get("classification"):
            raise ServeError(
                422, "the classification extension (top-k strings) is not supported; ask for 'label' and 'scores'"
            )
        if "shared_memory_region" in parameters:
            raise ServeError(422, "shared-memory outputs are not supported")
        wanted[output.name] = _flag(parameters, "binary_data", default_binary)
    return wanted
