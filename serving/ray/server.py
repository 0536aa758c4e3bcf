"""``adamix-serve --ray``: run the export folders as a Ray Serve application, on a local Ray instance started
here or on an existing cluster (``--ray-address`` / ``RAY_ADDRESS``), until SIGTERM or Ctrl-C.

Folders are checked here first, as in one process (a broken folder is one line and exit 2, before Ray starts).
A local instance is kept small: the machine's cores as logical CPUs, a 128 MiB object store, no dashboard. On
stop, the application is deleted (replicas get ``--graceful-timeout`` to finish their requests); a local
instance is then shut down, an existing cluster is left running.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import replace
from pathlib import Path

import ray
from ray import serve

from adamix_deploy.serving.engine.runtime import ServerSettings
from adamix_deploy.serving.http.server import ConfigError, check_folders
from adamix_deploy.serving.ray.deployment import AdamixReplica, ReplicaConfig
from adamix_deploy.serving.ray.options import (
    APP_NAME,
    LOCAL_OBJECT_STORE_BYTES,
    RayOptions,
    RayOptionsError,
    proxy_timeout_s,
)

log = logging.getLogger("adamix.serve")
STATUS_POLL_S = 5.0  # how often the command checks that its application still exists
# Ray 2.60's `ray start` turns token authentication on, and a driver given an address sends no token unless told
AUTH_HINT = "a cluster with token authentication, Ray's default, also needs RAY_AUTH_MODE=token and its token"


def serve_on_ray(
    folders: list[str],
    settings: ServerSettings,
    options: RayOptions,
    api_key_file: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    precision: str = "fp32",
    graceful_timeout_s: float = 30.0,
    log_level: str = "info",
) -> int:
    """Deploy, serve until stopped, tear down; returns the exit code (1 if the replicas could not start)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = check_folders(folders, precision)
    local = options.address is None
    if local:
        _check_port_free(host, port)
    if settings.threads is None:
        # onnxruntime would otherwise start one thread per core in every replica, all on the same cores
        settings = replace(settings, threads=max(1, int(options.replica_cpus)))
    _connect(options, log_level)
    stop = _stop_on_signals()
    try:
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": proxy_timeout_s(settings)})
        # absolute: a replica's working directory is Ray's, not this command's
        paths = tuple(str(Path(f).resolve()) for f in folders)
        key_file = str(Path(api_key_file).resolve()) if api_key_file else None
        config = ReplicaConfig(paths, precision, replace(settings, api_keys=()), key_file, log_level)
        deployment = AdamixReplica.options(
            **options.deployment_options(settings, len(models), graceful_timeout_s, log_level)
        ).bind(config)
        try:
            serve.run(deployment, name=APP_NAME, route_prefix="/")
        except RuntimeError as e:
            log.error("the replicas did not start: %s", _deployment_failure() or _last_error_line(str(e)))
            return 1
        scale = (
            f"autoscaling {options.autoscaling_config()}"
            if options.autoscaling
            else f"{options.replicas} replicas"
        )
        where = "a local Ray instance" if local else f"the Ray cluster at {options.address}"
        log.info("serving %s on http://%s:%d (Ray Serve, %s, on %s)", ", ".join(m.name for m in models), host,
                 port, scale, where)  # fmt: skip
        while not stop.wait(STATUS_POLL_S):
            if APP_NAME not in serve.status().applications:
                log.error("the Ray Serve application %r was deleted; stopping", APP_NAME)
                return 1
        log.info("stopping: replicas get up to %g s for their requests", graceful_timeout_s)
        return 0
    finally:
        _tear_down(local)


def _connect(options: RayOptions, log_level: str) -> None:
    level = log_level.upper()
    # Ray reports usage statistics over the network by default; a model server should make no calls of its own
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address is None:
        cpus = options.local_cpus()
        if cpus > (os.cpu_count() or 1):
            log.info("%d replica CPUs asked on %d cores: the replicas share them", cpus, os.cpu_count())
        ray.init(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 include_dashboard=False, logging_level=level)  # fmt: skip
        return
    _check_reachable(options.address)
    try:
        ray.init(address=options.address, logging_level=level)
    except (ConnectionError, ValueError) as e:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else f" ({AUTH_HINT})"
        raise RayOptionsError(f"cannot connect to the Ray cluster at {options.address}: {e}{hint}") from None


def _check_reachable(address: str) -> None:
    """Ray retries an address nobody answers at for minutes; a TCP probe says so in one line first. Addresses
    without a port (``auto``) are Ray's to resolve."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise RayOptionsError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def _tear_down(local: bool) -> None:
    if not ray.is_initialized():
        return
    try:
        serve.delete(APP_NAME)  # waits for the replicas' graceful shutdown
    except Exception as e:  # already gone, or the cluster went away: nothing left to stop
        log.warning("could not delete the application: %s", _last_error_line(str(e)))
    if local:
        serve.shutdown()
    ray.shutdown()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum, frame) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop


def _check_port_free(host: str, port: int) -> None:
    """Ray's proxy would retry a taken port forever in the background; say so in one line instead."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _deployment_failure() -> str | None:
    """Why the replicas failed, from the deployment's status (serve.run's own error names no cause)."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # the cluster went away too: serve.run's message is all there is
        return None
    messages = [d.message for d in app.deployments.values() if d.message] if app else []
    return _last_error_line(messages[-1]) if messages else None


def _last_error_line(message: str) -> str:
    """The line that names the error in Ray's multi-line message (its last ``SomeError: ...`` line)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line]
    return (named or lines or [message])[-1]
