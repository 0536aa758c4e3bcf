"""`adamix-triton`: parse the options, write the model repository (`write_repository`, in
`adamix_deploy.serving.triton.repository`), print its summary as JSON."""

from __future__ import annotations

import json

import click

from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.export_folder import PRECISIONS
from adamix_deploy.serving.triton.repository import KINDS, LAYOUTS, BatchingOptions, write_repository


def _batch_sizes(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


@click.command("adamix-triton")
@click.argument("export_folder", type=click.Path())
@click.option("--output", required=True, type=click.Path(), help="Model repository folder to write (atomically).")
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="ensemble",
    show_default=True,
    help="ensemble: python tokenizer -> onnxruntime -> python postprocess; python: one Python model.",
)
@click.option("--name", help="Model name in the repository (default: the export folder's name).")
@click.option("--max-batch-size", type=int, default=32, show_default=True)
@click.option("--preferred-batch-sizes", default="4,8,16", show_default=True, callback=_batch_sizes)
@click.option("--max-queue-delay-us", type=int, default=500, show_default=True)
@click.option(
    "--dynamic-batching/--no-dynamic-batching",
    default=True,
    show_default=True,
    help="Triton's dynamic batcher; off, every request runs alone (the comparison point for batching).",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Instances of each model.")
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    default="cpu",
    show_default=True,
    help="Instance kind of the model that runs the ONNX graph.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Which ONNX file of the export (int8: CPU, fp16: GPU).",
)
@click.option("--truncate", is_flag=True, help="Cut inputs over the token limit instead of failing the request.")
@click.option(
    "--python-env",
    type=click.Path(),
    help="EXECUTION_ENV_PATH for the Python models: a conda-pack archive or an env folder with "
    "bin/activate holding numpy<2, tokenizers (and onnxruntime for --layout python).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
def triton_cli(**o) -> None:
    """Write a Triton Inference Server model repository for a classification or regression export folder."""
    batching = BatchingOptions(
        max_batch_size=o["max_batch_size"], preferred_batch_sizes=o["preferred_batch_sizes"],
        max_queue_delay_us=o["max_queue_delay_us"], instances=o["instances"], kind=o["kind"],
        dynamic=o["dynamic_batching"],
    )  # fmt: skip
    summary = write_repository(
        o["export_folder"], o["output"], layout=o["layout"], name=o["name"], batching=batching,
        precision=o["precision"], truncate=o["truncate"], python_env=o["python_env"], overwrite=o["overwrite"],
    )  # fmt: skip
    click.echo(json.dumps(summary, indent=2))


triton_command = run_one_line_errors(triton_cli)
