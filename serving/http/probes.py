"""The probe routes: ``/health`` (the process answers), ``/ready`` (every model loaded and warmed; 503 while
loading or after a load failure) and ``/metrics`` (Prometheus text). Load balancers and Prometheus call these
without credentials, so `create_app` includes this router without the API-key check."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adamix_deploy.serving.http import schemas as s

router = APIRouter(tags=["probes"])


@router.get("/health", response_model=s.HealthResponse)
async def health() -> s.HealthResponse:
    return s.HealthResponse()


@router.get(
    "/ready",
    response_model=s.ReadyResponse,
    responses={503: {"model": s.ReadyResponse, "description": "Still loading, or loading failed."}},
)
async def ready(request: Request) -> JSONResponse:
    runtimes = request.app.state.runtimes
    load_errors = request.app.state.load_errors
    body = s.ReadyResponse(
        ready=all(r.ready for r in runtimes.values()) and not load_errors,
        models={name: r.ready for name, r in runtimes.items()},
        error=load_errors[0] if load_errors else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
