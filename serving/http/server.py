"""Start the server: check every export folder, then run uvicorn.

Folders are checked before the port is bound (a broken folder is one line and exit 2). Sessions load in the
background after that; ``/ready`` turns 200 when every model is loaded and warmed. SIGTERM (or Ctrl-C) stops
accepting connections, lets in-flight requests finish (up to ``graceful_timeout_s``), then exits 0.
"""

from __future__ import annotations

import logging

import uvicorn

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import PRECISIONS
from adamix_deploy.serving.engine.model_folder import ModelFolderError, read_adapter_folders, read_model_folder
from adamix_deploy.serving.engine.runtime import ServerSettings
from adamix_deploy.serving.http.app import create_app

log = logging.getLogger("adamix.serve")


class ConfigError(AdamixError):
    """A problem with the server's folders; the message is one line for the user."""


def check_folders(folders: list[str], precision: str = "fp32") -> list:
    if not folders:
        raise ConfigError("give at least one export folder (written by adamix-export)")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
    models = []
    for folder in folders:
        try:
            model = read_model_folder(folder, precision)
            models.append(model)
            if model.is_adapter_base:  # the base itself is not served: its adapters are, and more can be added
                models.extend(read_adapter_folders(model))
        except ModelFolderError as e:
            raise ConfigError(str(e)) from None
    names = [m.name for m in models]
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(f"two folders are named {name!r}; models are served under their folder names")
    return models


class _Server(uvicorn.Server):
    exit_code = 0

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process "killed by
        # SIGTERM"; a requested stop that finished cleanly is a normal exit.
        self._captured_signals.clear()


def serve(
    folders: list[str],
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    precision: str = "fp32",
    graceful_timeout_s: float = 30.0,
    log_level: str = "info",
) -> int:
    """Run until stopped; returns the process exit code (0 after a clean stop, 1 if a model failed to load)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = check_folders(folders, precision)
    server: _Server | None = None

    def on_load_failure(message: str) -> None:
        server.exit_code = 1
        server.should_exit = True

    app = create_app(models, settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s,
        access_log=False,  # per-request lines cost time at load; /metrics counts requests instead
    )  # fmt: skip
    server = _Server(config)
    log.info("serving %s on http://%s:%d", ", ".join(m.name for m in models if not m.is_adapter_base), host, port)
    server.run()
    return server.exit_code
