"""Scores after every epoch of one run, for the selection study: what each way of picking the checkpoint
(the last one, the best epoch on the validation split, the best epoch on the reported set itself) would report.

A run trains one epoch per call of `adamix_deploy.train.train` (``stop_after`` = the epoch's steps, then
``resume``), and the checkpoint written at each epoch's end is loaded and scored. A resumed run ends with the
same weights as an uninterrupted one (tests/training/test_checkpoint.py), so the last epoch's scores are those
of the plain run at the same setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path


def train_scoring_epochs(options, steps_per_epoch: int, score: Callable[[object], dict]) -> tuple[dict, list[dict]]:
    """Train ``options`` (a TrainOptions) to the end, calling ``score(checkpoint)`` after each epoch; returns the
    final training summary and one ``{"epoch", "step", **score}`` per epoch."""
    from adamix_deploy.checkpoint import load_checkpoint
    from adamix_deploy.train import train

    output = Path(options.output)
    per_epoch: list[dict] = []
    summary = train(replace(options, stop_after=steps_per_epoch))
    while True:
        checkpoint = load_checkpoint(output)
        per_epoch.append({"epoch": len(per_epoch) + 1, "step": checkpoint.config.training["step"],
                          **score(checkpoint)})  # fmt: skip
        if summary.get("complete") is not False:
            return summary, per_epoch
        summary = train(replace(options, stop_after=steps_per_epoch), resume=True)


def selected(per_epoch: list[dict], chooser: str | None, reported: str, metric: str, higher: bool) -> dict:
    """The epoch a protocol picks and its ``reported`` score: ``chooser`` None is the last epoch; otherwise
    the epoch with the best ``chooser`` score (ties: the earlier epoch, as a best-so-far rule keeps it)."""
    row = per_epoch[-1]
    if chooser is not None:
        row = per_epoch[0]
        for candidate in per_epoch[1:]:
            value, kept = candidate[chooser][metric], row[chooser][metric]
            if (value > kept) if higher else (value < kept):
                row = candidate
    return {"epoch": row["epoch"], "score": row[reported][metric]}
