"""adamix-serve as a Ray Serve deployment: every replica builds the usual app (`create_app`: the same routes,
limits, errors and JSON answers as one ``adamix-serve`` process) over its own onnxruntime sessions, with
classification batched by Ray's ``@serve.batch`` (`ServeBatcher`) instead of the in-process batcher.

Ray's HTTP proxy takes the requests and hands each to a replica; the Serve controller replaces a replica whose
process dies. A replica loads and warms its models in its constructor, so Ray routes nothing to it before it
can answer. Never imports torch (tested).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from fastapi import FastAPI
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adamix_deploy.serving.engine.runtime import ServerSettings
from adamix_deploy.serving.http.api_keys import read_api_keys
from adamix_deploy.serving.http.app import create_app, start_models
from adamix_deploy.serving.http.server import check_folders
from adamix_deploy.serving.ray.batching import ServeBatcher

REPLICA_HEADER = "x-adamix-replica"


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica is built from. The API keys travel as the key file's path, read by each replica, so
    they never enter Ray's stored deployment arguments; folders and key file must be readable at the same paths
    on every node."""

    folders: tuple[str, ...]
    precision: str
    settings: ServerSettings  # api_keys empty: see api_key_file
    api_key_file: str | None = None
    log_level: str = "info"


@serve.deployment
@serve.ingress()  # no app here: each replica builds its own in __serve_build_asgi_app__
class AdamixReplica:
    async def __init__(self, config: ReplicaConfig):
        logging.getLogger("adamix").setLevel(config.log_level.upper())
        models = check_folders(list(config.folders), config.precision)
        keys = read_api_keys(config.api_key_file) if config.api_key_file else ()
        settings = replace(config.settings, api_keys=keys)
        self.adamix_app = create_app(
            models, settings, make_batcher=ServeBatcher, load_on_startup=False, adapters_at_run_time=False
        )
        self.adamix_app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        # before the constructor returns: Ray sends traffic to a replica as soon as it is constructed
        await start_models(self.adamix_app)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.adamix_app


class ReplicaHeader:
    """Names the replica that answered in an ``X-Adamix-Replica`` header (Ray's replica id, as in its logs), so a
    request can be traced to its replica; one process has no such header."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)
