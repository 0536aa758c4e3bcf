"""Load and unload onnxruntime LoRA adapters at run time, without a restart: ``POST /v1/adapters`` serves an
adapter folder from a path on the server as a new model on its base's shared graph, ``DELETE
/v1/adapters/{name}`` stops routing to it, lets the requests already on it finish, then drops it. Both take
the API key when keys are set (the router is guarded like the model routes)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from adamix_deploy.serving.adapters import schemas as s
from adamix_deploy.serving.engine.model_folder import ModelFolderError, read_adapter
from adamix_deploy.serving.engine.runtime import ModelRuntime
from adamix_deploy.serving.errors import ServeError
from adamix_deploy.serving.http.openapi import error_docs
from adamix_deploy.serving.native.schemas import ModelCard

router = APIRouter(tags=["adapters"])


@router.post("/v1/adapters", response_model=ModelCard, responses=error_docs(404, 409, 422))
async def load_adapter(body: s.LoadAdapterRequest, request: Request) -> ModelCard:
    state = request.app.state
    _check_allowed(state)
    base = _base_for(state.adapter_bases, body.base)
    async with state.adapter_lock:  # one load or unload at a time: names are checked and claimed under it
        try:
            model = await asyncio.to_thread(read_adapter, base, body.path, body.name)
        except ModelFolderError as e:
            raise ServeError(422, str(e)) from None
        if model.name in state.runtimes or model.name in state.adapter_bases:
            raise ServeError(
                409, f"a model named {model.name!r} is already served; DELETE it first or pick a name"
            )
        runtime = ModelRuntime(model, state.settings, state.metrics, state.make_batcher)
        try:
            await runtime.start()
        except Exception as e:  # the folder's checks passed, yet onnxruntime refused it: the caller's file
            await runtime.stop()
            message = str(e) if isinstance(e, ModelFolderError) else f"{body.path}: the adapter does not run: {e}"
            raise ServeError(422, message) from None
        state.runtimes[model.name] = runtime
        request.app.openapi_schema = None  # its model-name enums change
    return ModelCard(**model.public_card())


@router.delete("/v1/adapters/{name}", response_model=s.UnloadAdapterResponse, responses=error_docs(404, 422))
async def unload_adapter(name: str, request: Request) -> s.UnloadAdapterResponse:
    state = request.app.state
    _check_allowed(state)
    async with state.adapter_lock:
        runtime = state.runtimes.get(name)
        if runtime is None:
            raise ServeError(404, f"no model named {name!r}; GET /v1/models lists the served models")
        if runtime.model.base is None:
            raise ServeError(422, f"{name!r} is a model of its own, not an adapter: only adapters unload")
        del state.runtimes[name]  # new requests for it get 404 from here on
        request.app.openapi_schema = None
    drained = await runtime.drain_and_stop(state.settings.request_timeout_s)
    return s.UnloadAdapterResponse(id=name, drained=drained)


def _check_allowed(state) -> None:
    if not state.adapters_at_run_time:
        raise ServeError(
            422, "adapters cannot be loaded or unloaded at run time under Ray Serve (a request reaches one replica "
            "of several): put the adapter folder in the base's adapters/ and redeploy",
        )  # fmt: skip


def _base_for(bases: dict, name: str | None):
    if name is not None:
        if name not in bases:
            raise ServeError(
                404, f"no adapter base named {name!r}; this server's bases: {', '.join(bases) or 'none'}"
            )
        return bases[name]
    if len(bases) != 1:
        raise ServeError(
            422, "this server has no adapter base (serve a folder made by adamix-export --adapter-of)"
            if not bases else f"this server has {len(bases)} adapter bases: name one in \"base\"",
        )  # fmt: skip
    return next(iter(bases.values()))
