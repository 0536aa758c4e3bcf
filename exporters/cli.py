"""`adamix-export`: parse the options, run the export pipeline, print where it went and what parity found."""

from __future__ import annotations

import json

import click

from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.export_folder import ADAPTER_LORA_LAYERS, QUANTIZED_PRECISIONS


@click.command("adamix-export")
@click.option(
    "--merge",
    "source",
    required=True,
    type=click.Path(),
    help="Mixture checkpoint folder, PEFT LoRA folder, or official AdaMix .bin/.pt file.",
)
@click.option("--output", type=click.Path(), help="Export folder to write (atomically).")
@click.option(
    "--adapter-of",
    type=click.Path(),
    help="Instead of --output: add the checkpoint as an onnxruntime LoRA adapter to this base folder "
    "(created from the checkpoint's base model when it does not exist; an existing base is never rewritten).",
)
@click.option("--adapter-name", help="With --adapter-of: the adapter's name (default: the checkpoint's).")
@click.option(
    "--adapter-layers",
    type=click.Choice(ADAPTER_LORA_LAYERS),
    help="With --adapter-of, when it creates the base: LoRA inputs on the family's default layers (no cost; "
    "wider when the checkpoint adapts more) or on every linear layer (any LoRA fits; +2.8 to +6.7 % latency on MiniLM). "
    "Default: default.",
)
@click.option("--merge-method", default="average", show_default=True, help="average | delta-average | expert:i")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZED_PRECISIONS),
    multiple=True,
    help="Also write model_int8.onnx / model_int4.onnx for CPU (repeatable). Encoders: dynamic int8. "
    "Decoders: weight-only int8 or int4 (MatMulNBits).",
)
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (GPU).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--verify-file", type=click.Path(), help="Parity inputs (else built-in sentences / prompts).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="fp32 max |Δlogit| allowed.")
@click.option(
    "--greedy-steps", type=int, default=16, show_default=True, help="Generation parity: tokens compared."
)
@click.option(
    "--parity-prompts",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Generation parity: prompts decoded (from --verify-file, else built-in: at most 8).",
)
@click.option(
    "--warn-agreement",
    type=click.FloatRange(0, 1),
    default=0.95,
    show_default=True,
    help="Print a warning when a quantised or fp16 file agrees with the reference less than this.",
)
@click.option("--base-model", help="Base model folder or packaged name (PEFT / official imports, moved bases).")
@click.option("--lora-alpha", type=float, help="Official GPT-2 AdaMix checkpoints: LoRA alpha (not stored).")
@click.option("--adapter-activation", default="gelu", show_default=True, help="Official NLU checkpoints.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
def export_cli(**o) -> None:
    """Merge the experts, fold them into the base model, export ONNX and prove parity."""
    from adamix_deploy.exporters.parity import reduced_precision_warnings
    from adamix_deploy.exporters.pipeline import export_checkpoint

    if bool(o["output"]) == bool(o["adapter_of"]):
        raise click.UsageError("give either --output (a folded export) or --adapter-of (an adapter of a base)")
    if o["adapter_of"]:
        _export_adapter(o)
        return
    for flag in ("adapter_name", "adapter_layers"):
        if o[flag]:
            raise click.UsageError(f"--{flag.replace('_', '-')} goes with --adapter-of")
    manifest = export_checkpoint(
        o["source"], o["output"], merge_method=o["merge_method"], quantize=o["quantize"], fp16=o["fp16"],
        opset=o["opset"], verify_file=o["verify_file"], overwrite=o["overwrite"], tolerance=o["tolerance"],
        base_model=o["base_model"], greedy_steps=o["greedy_steps"], parity_prompts=o["parity_prompts"],
        lora_alpha=o["lora_alpha"], adapter_activation=o["adapter_activation"],
    )  # fmt: skip
    click.echo(
        json.dumps({"output": str(o["output"]), "parity": manifest.parity, "files": manifest.files}, indent=2)
    )
    for line in reduced_precision_warnings(manifest.parity, manifest.onnx.models, o["warn_agreement"]):
        click.echo(line, err=True)


def _export_adapter(o: dict) -> None:
    from adamix_deploy.exporters.adapter_export import export_adapter

    unused = [flag for flag, key in (("--quantize", "quantize"), ("--fp16", "fp16"), ("--lora-alpha", "lora_alpha"))
              if o[key]]  # fmt: skip
    if unused:
        raise click.UsageError(f"{unused[0]} does not apply to --adapter-of (adapters feed the fp32 base graph)")
    manifest, created = export_adapter(
        o["source"], o["adapter_of"], name=o["adapter_name"], merge_method=o["merge_method"],
        verify_file=o["verify_file"], overwrite=o["overwrite"], tolerance=o["tolerance"],
        base_model=o["base_model"], greedy_steps=o["greedy_steps"], parity_prompts=o["parity_prompts"],
        opset=o["opset"], lora_layers=o["adapter_layers"] or "default",
    )  # fmt: skip
    click.echo(json.dumps({"base": str(o["adapter_of"]), "base_created": created, "adapter": manifest.name,
                           "ranks": manifest.ranks, "parity": manifest.parity}, indent=2))  # fmt: skip


export_command = run_one_line_errors(export_cli)
