"""``adamix-serve --ray``'s options, checked and turned into Ray Serve's deployment options. Nothing here imports
ray: the CLI checks these before it decides to start Ray (and plain ``adamix-serve`` never imports ray)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.serving.engine.runtime import ServerSettings

APP_NAME = "adamix"  # the Serve application; its replicas' processes are named ray::ServeReplica:adamix:...
PROXY_TIMEOUT_MARGIN_S = 2.0  # Ray's proxy gives up this long after --request-timeout (see proxy_timeout_s)
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024  # requests and answers are small JSON; Ray's default is 30% of RAM
CONSTRUCTOR_RETRIES = 3  # a replica that cannot load its models fails the start after this many tries (Ray: 20)


class RayOptionsError(AdamixError):
    """Inconsistent Ray options; the message is one line for the user."""


@dataclass(frozen=True)
class RayOptions:
    """Where the replicas run and how many. ``address`` None starts a local Ray instance for this process;
    ``min_replicas`` / ``max_replicas`` (either one) turn on Ray's autoscaling instead of a fixed count."""

    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    replica_cpus: float = 1.0

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return max(self.max_replicas or 1, self.min_replicas or 0) if self.autoscaling else self.replicas

    def autoscaling_config(self) -> dict:
        low = 1 if self.min_replicas is None else self.min_replicas
        return {
            "min_replicas": low,
            "max_replicas": self.most_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    def local_cpus(self) -> int:
        """Logical CPUs for a local instance: the machine's cores, or more when the replicas ask for more. Ray
        would otherwise leave the extra replicas pending forever; oversubscribed, they share the cores."""
        return max(os.cpu_count() or 1, math.ceil(self.most_replicas * self.replica_cpus))

    def deployment_options(
        self, settings: ServerSettings, model_count: int, graceful_timeout_s: float, log_level: str = "info"
    ) -> dict:
        """`serve.deployment(...).options(**this)`."""
        options = {
            "ray_actor_options": {"num_cpus": self.replica_cpus},
            # a log line per request costs time under load; adamix_requests_total in /metrics counts them
            "logging_config": {"enable_access_log": False, "log_level": log_level.upper()},
            # Every request the replica's own queues would accept reaches the replica, so 429 comes from the same
            # --max-queue as in one process; a smaller Ray limit would hold the rest back in the proxy, unbounded.
            "max_ongoing_requests": settings.max_queue * model_count,
            "graceful_shutdown_timeout_s": graceful_timeout_s,
            "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        }
        if self.autoscaling:
            options["autoscaling_config"] = self.autoscaling_config()
        else:
            options["num_replicas"] = self.replicas
        return options


def proxy_timeout_s(settings: ServerSettings) -> float:
    """Ray's end-to-end HTTP timeout: a replica answers 504 at --request-timeout itself; this only cuts a request
    whose replica never answers (408 from Ray's proxy), so no request hangs."""
    return settings.request_timeout_s + PROXY_TIMEOUT_MARGIN_S


def ray_options(
    ray: bool,
    address: str | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target_ongoing_requests: float | None,
    replica_cpus: float | None,
) -> RayOptions | None:
    """The options of ``--ray``, or None without it; one-line errors for options that do not go together."""
    given = {
        "--ray-address": address,
        "--replicas": replicas,
        "--min-replicas": min_replicas,
        "--max-replicas": max_replicas,
        "--target-ongoing-requests": target_ongoing_requests,
        "--replica-cpus": replica_cpus,
    }
    if not ray:
        named = [name for name, value in given.items() if value is not None]
        if named:
            raise RayOptionsError(f"{', '.join(named)} only apply with --ray")
        return None
    autoscaling = min_replicas is not None or max_replicas is not None
    if autoscaling and replicas is not None:
        raise RayOptionsError(
            "give either --replicas (a fixed count) or --min-replicas/--max-replicas (autoscaling)"
        )
    if target_ongoing_requests is not None and not autoscaling:
        raise RayOptionsError("--target-ongoing-requests applies with --min-replicas/--max-replicas (autoscaling)")
    if min_replicas is not None and max_replicas is not None and min_replicas > max_replicas:
        raise RayOptionsError(f"--min-replicas {min_replicas} is more than --max-replicas {max_replicas}")
    if max_replicas is None and min_replicas == 0:
        raise RayOptionsError("--min-replicas 0 needs --max-replicas (how many replicas traffic may start)")
    defaults = RayOptions()
    return RayOptions(
        address=address or os.environ.get("RAY_ADDRESS") or None,
        replicas=replicas or defaults.replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests or defaults.target_ongoing_requests,
        replica_cpus=replica_cpus or defaults.replica_cpus,
    )
