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


def train_scoring_epochs(
    options, steps_per_epoch: int, score: Callable[[object], dict]
) -> tuple[dict, list[dict]]:
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
    the epoch with the best ``chooser`` score, by `adamix-train --select-best`'s rule (ties: the earlier)."""
    from adamix_deploy.selection import improves

    row = per_epoch[-1]
    if chooser is not None:
        row = per_epoch[0]
        for candidate in per_epoch[1:]:
            if improves(candidate[chooser][metric], row[chooser][metric], higher):
                row = candidate
    return {"epoch": row["epoch"], "score": row[reported][metric]}


def selection_study(
    runs: dict[str, dict[int, list[dict]]],
    arm: str,
    other: str,
    reported: str,
    metric: str,
    higher: bool,
    scale: float = 1.0,
) -> dict:
    """``arm`` and ``other`` (per seed, their per-epoch scores) under the three ways of picking a checkpoint,
    scored on ``reported``: each arm's mean (95 % t-interval), its mean change from its own last checkpoint, the
    mean epoch picked, and the paired ``arm`` minus ``other`` difference (interval, seeds won). Seeds both ran."""
    from benchmarks.common.stats import paired, t_interval

    seeds = sorted(set(runs[arm]) & set(runs[other]))
    ways = {"last checkpoint": None, "best epoch on validation": "val", f"best epoch on {reported}": reported}
    out = {"reported": reported, "metric": metric, "seeds": seeds, "ways": {}}
    last = {
        name: [selected(runs[name][s], None, reported, metric, higher) for s in seeds] for name in (arm, other)
    }
    for way, chooser in ways.items():
        picked = {
            name: [selected(runs[name][s], chooser, reported, metric, higher) for s in seeds]
            for name in (arm, other)
        }
        entry = {}
        for name in (arm, other):
            scores = [scale * p["score"] for p in picked[name]]
            entry[name] = {
                "score": t_interval(scores),
                "change_from_last": t_interval(
                    [scale * (p["score"] - q["score"]) for p, q in zip(picked[name], last[name], strict=True)]
                ),  # fmt: skip
                "mean_epoch": sum(p["epoch"] for p in picked[name]) / len(seeds),
                "epochs": len(runs[name][seeds[0]]),
            }
        differences = [scale * (a["score"] - b["score"]) for a, b in zip(picked[arm], picked[other], strict=True)]
        result = paired(differences, higher)
        entry["difference"] = {"per_seed": differences, "interval": result["interval"], "wins": result["wins"]}
        out["ways"][way] = entry
    return out


def selection_rows(study: dict, arm: str, other: str, digits: int = 2) -> list[list]:
    """Table rows of one `selection_study`: one per way of picking."""

    def cell(interval, sign: str = "") -> str:
        mean, lo, hi = interval
        return f"{mean:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"

    rows = []
    for way, entry in study["ways"].items():
        a, b, d = entry[arm], entry[other], entry["difference"]
        rows.append([way, f"{cell(a['score'])} (epoch {a['mean_epoch']:.1f} of {a['epochs']})",
                     f"{cell(b['score'])} (epoch {b['mean_epoch']:.1f} of {b['epochs']})",
                     cell(a["change_from_last"], "+"), cell(b["change_from_last"], "+"), cell(d["interval"], "+"),
                     f"{d['wins']}/{len(study['seeds'])}"])  # fmt: skip
    return rows


def selection_header(study: dict, arm: str, other: str, label: str | None = None) -> list[str]:
    """The header of `selection_rows`' table; ``label`` names the metric (default: its key)."""
    reported, metric = study["reported"], label or study["metric"]
    return [f"picked by ({len(study['seeds'])} seeds; {metric} on {reported})", f"{arm} (mean epoch)",
            f"{other} (mean epoch)", f"{arm} change from its last", f"{other} change from its last",
            f"{arm} minus {other} (95 % CI)", "seeds won"]  # fmt: skip
