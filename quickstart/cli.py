"""README command 1: the whole pipeline on the built-in default, train -> merge/export -> serve -> demo.

Trains a small AdaMix mixture for classification (MiniLM-L6, adapters) and one for generation (SmolLM2,
LoRA) on the demo data that ships with the project, exports both with ``adamix-export --merge``, then starts
``adamix-serve`` on the two export folders and the demo page as its client, and prints the URLs.
A second run reuses what is built: a finished checkpoint, and an export made from that same checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from adamix_deploy.config import MixtureSpec, TrainOptions
from adamix_deploy.contracts.checkpoint_format import read_checkpoint_config
from adamix_deploy.contracts.command import run_one_line_errors
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import (
    MANIFEST_NAME,
    ExportFolderError,
    Manifest,
    read_manifest,
    sha256_folder,
)
from adamix_deploy.testing.processes import NotReady, stop_process, wait_until_ready
from adamix_deploy.train import train

DEMO_DATA = Path(__file__).resolve().parent / "data"


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
        config = read_checkpoint_config(output)
        if config.training and config.training.get("complete"):
            click.echo(f"quickstart: reusing {output} (delete it to train again)", err=True)
            return {"output": str(output), "reused": True, "history": config.training["history"][-1]}
        return train(options, resume=True)
    return train(options)


def export_job(checkpoint: Path, deploy: Path) -> Manifest:
    """Export a checkpoint unless ``deploy`` already holds an export of exactly this checkpoint."""
    from adamix_deploy.exporters.pipeline import export_checkpoint

    if (deploy / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(deploy)
        except ExportFolderError:
            manifest = None  # an older or broken export: made again below
        if manifest and manifest.source.sha256 == sha256_folder(checkpoint, manifest.source.files_hashed):
            click.echo(f"quickstart: reusing {deploy} (exported from this checkpoint)", err=True)
            return manifest
    click.echo(f"quickstart: exporting {checkpoint} -> {deploy} (merge, ONNX, parity check)", err=True)
    return export_checkpoint(checkpoint, deploy, overwrite=True)


def _wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    try:
        wait_until_ready(url, timeout, proc, interval_s=0.2)
    except NotReady as e:
        if e.returncode is not None:
            raise AdamixError(
                f"{what} exited with code {e.returncode} before it was up (its messages are above)"
            ) from None
        raise AdamixError(f"{what} was not up at {url} after {timeout:.0f} s") from None


def smoke_test(api: str, names: list[str]) -> None:
    """One real request per model through the running server, so "ready" means answered, not just started."""

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            api + path, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except OSError as e:
            raise AdamixError(f"adamix-serve did not answer {path}: {e}") from None

    sentence, record = (
        "a lovely, warm film",
        "name[The Eagle], eatType[coffee shop], food[French], area[riverside]",
    )
    classified = post(f"/v1/models/{names[0]}/classify", {"inputs": [sentence]})["results"][0]
    score = classified["scores"][classified["label"]]
    click.echo(f"quickstart: {names[0]}: {sentence!r} -> {classified['label']} ({score:.2f})", err=True)
    generated = post(f"/v1/models/{names[1]}/generate", {"prompt": record, "max_new_tokens": 40})["outputs"][0]
    click.echo(f"quickstart: {names[1]}: {record!r} -> {generated['text'].strip()!r}", err=True)


def serve_and_demo(deploys: list[Path], port: int, demo_port: int, exit_when_ready: bool) -> None:
    """Start adamix-serve on the export folders and the demo page as its client; print the URLs; run until
    Ctrl-C or SIGTERM (or, with ``exit_when_ready``, stop both once they answer)."""
    bin_dir = Path(sys.executable).parent
    api = f"http://127.0.0.1:{port}"
    # the children's messages go to stderr: stdout carries only the JSON summary
    server = subprocess.Popen(
        [str(bin_dir / "adamix-serve"), *map(str, deploys), "--port", str(port)], stdout=sys.stderr
    )
    demo = None
    try:
        _wait(f"{api}/ready", server, "adamix-serve")
        smoke_test(api, [d.name for d in deploys])
        demo = subprocess.Popen(
            [str(bin_dir / "adamix-demo"), "--server", api, "--port", str(demo_port)], stdout=sys.stderr
        )
        _wait(f"http://127.0.0.1:{demo_port}/", demo, "adamix-demo")
        click.echo(
            f"\nquickstart: ready\n  API (OpenAPI docs at /docs): {api}\n  demo page:                  "
            f"http://127.0.0.1:{demo_port}\n  try: curl -s {api}/v1/models/sentiment/classify "
            "-H 'content-type: application/json' -d '{\"inputs\": [\"a lovely, warm film\"]}'\n",
            err=True,
        )
        if exit_when_ready:
            return
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        click.echo("quickstart: Ctrl-C stops the server and the demo", err=True)
        while server.poll() is None and demo.poll() is None:
            time.sleep(0.5)
        raise AdamixError("adamix-serve or adamix-demo stopped unexpectedly (messages above)")
    finally:
        for proc in (demo, server):
            if proc is not None:
                stop_process(proc)


@click.command("adamix-quickstart")
@click.option("--workdir", default="runs/quickstart", show_default=True, type=click.Path())
@click.option("--scale", default=1.0, show_default=True, help="Shrink the demo jobs (CI uses 0.05).")
@click.option("--port", type=int, default=8000, show_default=True, help="adamix-serve port.")
@click.option("--demo-port", type=int, default=7860, show_default=True, help="Demo page port.")
@click.option("--no-serve", is_flag=True, help="Stop after the exports.")
@click.option("--exit-when-ready", is_flag=True, help="Start the server and the demo, check both, stop (CI).")
def quickstart_cli(
    workdir: str, scale: float, port: int, demo_port: int, no_serve: bool, exit_when_ready: bool
) -> None:
    """Train the two demo mixtures, export them, serve them and open the demo page."""
    if not 0 < scale <= 1:
        raise AdamixError(f"scale must be in (0, 1], got {scale}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    jobs = demo_jobs(Path(workdir), scale)
    results = [run_job(job) for job in jobs]
    deploys = []
    for job, result in zip(jobs, results, strict=True):
        checkpoint = Path(job.output)
        deploy = Path(workdir) / "deploy" / checkpoint.name
        manifest = export_job(checkpoint, deploy)
        result["export"] = {"folder": str(deploy), "parity": manifest.parity["stages"].get("onnx_fp32")}
        deploys.append(deploy)
    click.echo(json.dumps(results, indent=2))
    click.echo(
        f"quickstart: built in {time.perf_counter() - started:.0f} s; exports in {workdir}/deploy", err=True
    )
    if not no_serve:
        serve_and_demo(deploys, port, demo_port, exit_when_ready)


quickstart_command = run_one_line_errors(quickstart_cli)
