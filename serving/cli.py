"""`adamix-serve`: parse the options (types and ranges are checked here, once), then run the server."""

from __future__ import annotations

import sys

import click

from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.export_folder import PRECISIONS


@click.command("adamix-serve")
@click.argument("folders", nargs=-1, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key-file", type=click.Path(), help="Keys, one per line; /v1 routes then need one.")
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, 1024),
    default=32,
    show_default=True,
    help="Classification inputs per onnxruntime call; 1 turns dynamic batching off.",
)
@click.option(
    "--max-batch-wait-ms",
    type=click.FloatRange(0, 10000),
    default=0.0,
    show_default=True,
    help="Extra wait to fill a batch. At 0, a batch is what arrived while the previous one ran.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Waiting requests per model before 429.",
)
@click.option(
    "--max-generation-batch",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Generation rows decoded together.",
)
@click.option(
    "--max-inputs", type=click.IntRange(1), default=64, show_default=True, help="Inputs (or prompts) per request."
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Cap on a request's max_new_tokens.",
)
@click.option("--max-body-bytes", type=click.IntRange(1), default=1 << 20, show_default=True)
@click.option(
    "--request-timeout",
    type=click.FloatRange(0.001),
    default=60.0,
    show_default=True,
    help="Seconds before a request is answered 504.",
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get after SIGTERM.",
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads per model.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Which of the export's ONNX files to serve.",
)
@click.option("--gpu", is_flag=True, help="CUDA provider first, CPU fallback (logged).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option(
    "--ray", "use_ray", is_flag=True, help="Run as a Ray Serve application (extra [ray]): replicas, same HTTP API."
)
@click.option(
    "--ray-address",
    help="With --ray: an existing cluster (e.g. 10.0.0.5:6379, or auto). Default: RAY_ADDRESS, else a local Ray instance.",
)
@click.option("--replicas", type=click.IntRange(1), help="With --ray: a fixed number of replicas (default 1).")
@click.option("--min-replicas", type=click.IntRange(0), help="With --ray: autoscaling lower bound (default 1).")
@click.option("--max-replicas", type=click.IntRange(1), help="With --ray: autoscaling upper bound.")
@click.option(
    "--target-ongoing-requests",
    type=click.FloatRange(0, min_open=True),
    help="With autoscaling: requests in flight per replica that Ray scales to keep (default 2).",
)
@click.option(
    "--replica-cpus",
    type=click.FloatRange(0, min_open=True),
    help="With --ray: CPUs Ray reserves per replica (default 1; also the replica's onnxruntime threads unless --threads).",
)
def serve_cli(
    folders, host, port, api_key_file, precision, graceful_timeout, log_level, request_timeout, use_ray,
    ray_address, replicas, min_replicas, max_replicas, target_ongoing_requests, replica_cpus, **o,
) -> None:  # fmt: skip
    """Serve export folders (written by adamix-export) over HTTP. Never imports torch; imports ray only
    with --ray."""
    from adamix_deploy.serving.engine.runtime import ServerSettings
    from adamix_deploy.serving.http.api_keys import read_api_keys
    from adamix_deploy.serving.ray.options import ray_options

    on_ray = ray_options(
        use_ray, ray_address, replicas, min_replicas, max_replicas, target_ongoing_requests, replica_cpus
    )
    keys = read_api_keys(api_key_file) if api_key_file else ()
    settings = ServerSettings(request_timeout_s=request_timeout, api_keys=keys, **o)
    if on_ray is None:
        from adamix_deploy.serving.http.server import serve

        code = serve(list(folders), settings, host, port, precision, graceful_timeout, log_level)
    else:
        try:
            from adamix_deploy.serving.ray.server import serve_on_ray
        except ImportError as e:
            raise click.ClickException(f"--ray needs Ray Serve: pip install 'adamix-deploy[ray]' ({e})") from None
        code = serve_on_ray(
            list(folders), settings, on_ray, api_key_file, host, port, precision, graceful_timeout, log_level
        )
    sys.exit(code)


serve_command = run_one_line_errors(serve_cli)
