"""README command 1: the main job end to end on the built-in default.

Trains a small AdaMix mixture for classification (MiniLM-L6, adapters) and one for generation (SmolLM2,
LoRA) on the demo data that ships with the project, and prints where they are and how they scored.
A finished checkpoint is reused on a second run. (Export, serving and the demo page join in later.)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from adamix_deploy.checkpoint import read_config
from adamix_deploy.errors import AdamixError
from adamix_deploy.inject import MixtureSpec
from adamix_deploy.train import TrainOptions, train

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


def demo_jobs(workdir: Path, scale: float) -> list[TrainOptions]:
    """The two built-in jobs; ``scale`` < 1 shrinks them (CI runs a tiny version)."""

    def n(count: int) -> int:
        return max(8, int(count * scale))

    return [
        TrainOptions(
            model="minilm",
            task="classification",
            train_file=str(DEMO_DATA / "sentiment_train.tsv"),
            eval_file=str(DEMO_DATA / "sentiment_dev.tsv"),
            output=str(workdir / "sentiment"),
            mixture=MixtureSpec("adapter", experts=4, share="up", bottleneck=16),
            consistency_weight=1.0,
            epochs=3 if scale >= 1 else 1,
            batch_size=16,
            max_length=64,
            max_train_examples=n(320),
        ),
        TrainOptions(
            model="smollm2",
            task="generation",
            train_file=str(DEMO_DATA / "restaurants_train.csv"),
            eval_file=str(DEMO_DATA / "restaurants_dev.csv"),
            output=str(workdir / "restaurants"),
            mixture=MixtureSpec("lora", experts=4, share="up", rank=8, alpha=16),
            consistency_weight=1.0,
            epochs=1,
            batch_size=8,
            lr=1e-3,
            max_length=96,
            max_train_examples=n(240),
            max_eval_examples=n(60),
            generate_eval=n(20) if scale >= 1 else 2,
            max_new_tokens=48,
        ),
    ]


def run_job(options: TrainOptions) -> dict:
    output = Path(options.output)
    if output.exists():
        config = read_config(output)
        if config["training"].get("complete"):
            click.echo(f"quickstart: reusing {output} (delete it to train again)", err=True)
            return {"output": str(output), "reused": True, "history": config["training"]["history"][-1]}
        return train(options, resume=True)
    return train(options)


@click.command("adamix-quickstart")
@click.option("--workdir", default="runs/quickstart", show_default=True, type=click.Path())
@click.option("--scale", default=1.0, show_default=True, help="Shrink the demo jobs (CI uses 0.05).")
def quickstart_cli(workdir: str, scale: float) -> None:
    """Train the two demo mixtures (classification and generation) and print their summaries."""
    if not 0 < scale <= 1:
        raise AdamixError(f"scale must be in (0, 1], got {scale}")
    results = [run_job(job) for job in demo_jobs(Path(workdir), scale)]
    click.echo(json.dumps(results, indent=2))
    click.echo(f"quickstart: mixture checkpoints in {workdir}/sentiment and {workdir}/restaurants", err=True)
