"""The HTTP application: `create_app` wires the runtimes, metrics, middleware, error answers and routers
together. The probes live in `adamix_deploy.serving.http.probes`; each API's routes and wire format in its own
folder, `adamix_deploy.serving.native`, `.openai`, `.adapters` and `.kserve` (KServe v2 / Open Inference
Protocol), each with its ``routes`` and ``schemas``; the API-key check in `auth`; scheduling and limits in
`adamix_deploy.serving.engine.runtime`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from adamix_deploy.serving.adapters import routes as adapter_routes
from adamix_deploy.serving.engine.batching import BatcherFactory, ClassificationBatcher
from adamix_deploy.serving.engine.model_folder import ServedModel
from adamix_deploy.serving.engine.runtime import ModelRuntime, ServerSettings
from adamix_deploy.serving.http import probes
from adamix_deploy.serving.http.auth import require_api_key
from adamix_deploy.serving.http.error_handlers import install_error_handlers
from adamix_deploy.serving.http.middleware import BodyLimitAndMetrics
from adamix_deploy.serving.http.openapi import error_docs, openapi_with_model_names
from adamix_deploy.serving.kserve import routes as kserve_routes
from adamix_deploy.serving.kserve.error_shape import KServeErrorShape, kserve_error_docs
from adamix_deploy.serving.metrics import ServerMetrics
from adamix_deploy.serving.native import routes as native_routes
from adamix_deploy.serving.openai import routes as openai_routes

log = logging.getLogger("adamix.serve")


def create_app(
    models: list[ServedModel],
    settings: ServerSettings,
    on_load_failure: Callable[[str], None] | None = None,
    make_batcher: BatcherFactory = ClassificationBatcher,
    load_on_startup: bool = True,
    adapters_at_run_time: bool = True,
) -> FastAPI:
    """The app for these models. Handlers find what they need on `app.state`: `runtimes` (name to
    `ModelRuntime`), `adapter_bases` (name to the base `ServedModel` of onnxruntime adapters), `metrics`,
    `settings` and `load_errors` (empty unless loading failed).
    ``load_on_startup=False`` leaves loading to the caller (`start_models`): a Ray Serve replica loads before it
    takes traffic. ``make_batcher`` builds each classification model's scheduler. ``adapters_at_run_time=False``
    refuses ``POST`` / ``DELETE /v1/adapters`` (Ray Serve: a request reaches one replica of several)."""
    metrics = ServerMetrics()
    runtimes = {m.name: ModelRuntime(m, settings, metrics, make_batcher) for m in models if not m.is_adapter_base}
    # bases of onnxruntime LoRA adapters: POST /v1/adapters adds adapters to them at run time
    adapter_bases = {m.name: m for m in models if m.is_adapter_base}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load after the port opens, so /health answers at once and /ready says when they are up.
        loader = asyncio.create_task(_load_all(app, on_load_failure)) if load_on_startup else None
        yield
        if loader:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
        for runtime in runtimes.values():
            await runtime.stop()

    app = FastAPI(
        title="adamix-serve",
        version="1",
        summary="Merged AdaMix models from adamix-export folders, on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.runtimes = runtimes
    app.state.adapter_bases = adapter_bases
    app.state.adapter_lock = asyncio.Lock()
    app.state.adapters_at_run_time = adapters_at_run_time
    app.state.make_batcher = make_batcher
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.load_errors = []
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    install_error_handlers(app)
    # probes stay open: load balancers and Prometheus call them without a key
    app.include_router(probes.router)
    # the 401 doc goes only where a key is checked, so the schema matches what the server answers
    guarded = (
        {"dependencies": [Depends(require_api_key)], "responses": error_docs(401)} if settings.api_keys else {}
    )
    app.include_router(native_routes.router, **guarded)
    app.include_router(openai_routes.router, **guarded)
    app.include_router(adapter_routes.router, **guarded)
    # KServe v2: the health routes stay open like the probes; the rest is guarded like the native routes, with
    # the 401 documented in the protocol's error shape, which KServeErrorShape gives every error under /v2
    app.include_router(kserve_routes.health_router)
    kserve_guarded = {**guarded, "responses": kserve_error_docs(401)} if guarded else {}
    app.include_router(kserve_routes.router, **kserve_guarded)
    # added after BodyLimitAndMetrics, so it wraps it and also reshapes that middleware's 413
    app.add_middleware(KServeErrorShape, prefix="/v2")
    app.openapi = lambda: openapi_with_model_names(app, runtimes, settings)
    return app


async def start_models(app: FastAPI) -> None:
    """Load, warm and start every model of ``app``; raises the first failure."""
    for runtime in app.state.runtimes.values():
        await runtime.start()
    app.state.metrics.ready.set(1)
    log.info("ready: %s", ", ".join(app.state.runtimes))


async def _load_all(app: FastAPI, on_load_failure: Callable[[str], None] | None) -> None:
    """`start_models`; on the first failure, record it for /ready and tell `on_load_failure`."""
    try:
        await start_models(app)
    except Exception as e:
        message = str(e)
        app.state.load_errors.append(message)
        log.error("failed to load: %s", message)
        if on_load_failure:
            on_load_failure(message)
