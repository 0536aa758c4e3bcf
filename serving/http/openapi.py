"""OpenAPI helpers: `error_docs` describes a route's error answers (all share the `ErrorResponse` body), and
`openapi_with_model_names` post-processes the generated schema with what this server was started with, so
clients and fuzzers know which model names and sizes exist."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.serving.engine.runtime import ModelRuntime, ServerSettings
from adamix_deploy.serving.http import schemas as s

_ERROR_STATUSES = {
    401: "Missing or wrong API key (only when the server has keys).",
    404: "No model of that name.",
    409: "A model of that name is already served.",
    413: "Request body over the size limit.",
    422: "Malformed JSON, wrong types, or over a limit (inputs, tokens, max_new_tokens).",
    429: "The model's queue is full; see Retry-After.",
    503: "The model is still loading.",
    504: "The request timed out.",
}

# what every model route can answer besides 200 (and 401, which create_app adds only when there are keys)
MODEL_ROUTE_ERRORS = (404, 413, 422, 429, 503, 504)


def error_docs(*statuses: int) -> dict:
    """The `responses` entries for these error statuses."""
    return {code: {"model": s.ErrorResponse, "description": _ERROR_STATUSES[code]} for code in statuses}


def openapi_with_model_names(app: FastAPI, runtimes: dict[str, ModelRuntime], settings: ServerSettings) -> dict:
    """The generated schema, with what this server was started with: the served model names as enums (`name`
    in the classify, generate and KServe /v2 paths, `model` in the OpenAI bodies; other names are 404) and the
    limits (inputs per request, the new-token cap). Clients and fuzzers then know which values exist."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    names = {
        "classify": [n for n, r in runtimes.items() if r.model.task in SEQUENCE_TASKS],
        "generation": [n for n, r in runtimes.items() if r.model.task == "generation"],
        "any": list(runtimes),
    }
    for path, operations in schema["paths"].items():
        if not path.startswith(("/v1/models/", "/v2/")):  # e.g. /v1/adapters/{name}: not only served names
            continue
        # KServe v2 infers with classification and regression models only; its metadata and ready routes
        # describe every served model
        if path.endswith(("/classify", "/infer")):
            task = "classify"
        else:
            task = "any" if path.startswith("/v2/") else "generation"
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name" and names[task]:
                    parameter["schema"]["enum"] = names[task]
    for body in ("CompletionRequest", "ChatRequest"):
        if names["generation"]:
            schema["components"]["schemas"][body]["properties"]["model"]["enum"] = names["generation"]
    bodies = schema["components"]["schemas"]
    for body, field in [("GenerateRequest", "max_new_tokens"), ("CompletionRequest", "max_tokens")]:
        bodies[body]["properties"][field]["maximum"] = settings.max_new_tokens
    for field in ("max_tokens", "max_completion_tokens"):
        for option in bodies["ChatRequest"]["properties"][field]["anyOf"]:
            if option.get("type") == "integer":
                option["maximum"] = settings.max_new_tokens
    bodies["ClassifyRequest"]["properties"]["inputs"]["maxItems"] = settings.max_inputs
    for option in bodies["GenerateRequest"]["properties"]["prompt"]["anyOf"]:
        if option.get("type") == "array":
            option["maxItems"] = settings.max_inputs
    app.openapi_schema = schema
    return schema
