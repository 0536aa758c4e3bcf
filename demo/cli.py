"""`adamix-demo`: the Gradio page, in-process over export folders or as the client of a running adamix-serve."""

from __future__ import annotations

import os

import click

from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.export_folder import PRECISIONS


@click.command("adamix-demo")
@click.argument("folders", nargs=-1, type=click.Path())
@click.option("--server", help="URL of a running adamix-serve (client mode), instead of export folders.")
@click.option("--api-key-file", type=click.Path(), help="Client mode: the server's API keys file (first key).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="In-process mode: which of the export's ONNX files to run.",
)
@click.option("--threads", type=click.IntRange(1), help="In-process mode: onnxruntime intra-op threads per model.")
@click.option("--gpu", is_flag=True, help="In-process mode: CUDA provider first, CPU fallback.")
def demo_cli(folders, server, api_key_file, host, port, precision, threads, gpu) -> None:
    """Gradio demo page over export folders (in-process, no server) or a running adamix-serve (--server)."""
    if bool(folders) == bool(server):
        raise click.UsageError(
            "give export folders (in-process mode) or --server URL (client mode), not both"
            if server
            else "give export folders (in-process mode) or --server URL (client mode)"
        )
    if server and (threads or gpu or precision != "fp32"):
        raise click.UsageError("--precision, --threads and --gpu are for in-process mode; the server has its own")
    if api_key_file and not server:
        raise click.UsageError("--api-key-file is for client mode (--server)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from an offline machine
    if server:  # client mode imports neither onnxruntime nor FastAPI
        from adamix_deploy.demo.http_backend import HTTPBackend
        from adamix_deploy.serving.http.api_keys import read_api_keys

        key = read_api_keys(api_key_file)[0] if api_key_file else None
        backend = HTTPBackend(server, key)
    else:
        from adamix_deploy.demo.inprocess_backend import InProcessBackend

        backend = InProcessBackend(list(folders), precision, threads, gpu)
    backend.models()  # client mode: the server must answer before the page is built (one error line if not)
    from adamix_deploy.demo.app import launch  # gradio is imported only now: the checks above fail fast

    launch(backend, host, port)


demo_command = run_one_line_errors(demo_cli)
