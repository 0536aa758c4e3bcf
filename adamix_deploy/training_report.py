"""What a training run reports: one line per epoch on stderr and the JSON summary the CLI prints."""

from __future__ import annotations

from pathlib import Path

from adamix_deploy.contracts.checkpoint_format import CheckpointConfig
from adamix_deploy.selection import Selection


def run_summary(
    output: Path,
    config: CheckpointConfig,
    history: list,
    final: dict,
    elapsed: float,
    step: int,
    selection: Selection | None = None,
) -> dict:
    """``metric`` and ``eval`` describe the weights saved: the best evaluation's with ``--select-best``."""
    metric = _headline_metric(config.task, final)
    return {
        "output": str(output),
        "task": config.task,
        "method": config.mixture["method"],
        "experts": config.mixture["experts"],
        "metric": metric,
        "eval": final.get("eval", {}),
        **(
            {"generation": {k: v for k, v in final["generation"].items() if k != "samples"}}
            if "generation" in final
            else {}
        ),
        "trainable_parameters": config.parameters["trainable"],
        "total_parameters": config.parameters["total"],
        "trainable_share": config.parameters["trainable_share"],
        "train_seconds": round(elapsed, 2),
        "steps": step,
        "epochs": len(history),
        **({"selection": selection.to_dict()} if selection else {}),
    }


def _headline_metric(task: str, final: dict) -> dict | None:
    if "generation" in final:
        return {"name": "bleu", "value": final["generation"]["bleu"]}
    ev = final.get("eval") or {}
    if task == "classification" and "accuracy" in ev:
        return {"name": "accuracy", "value": ev["accuracy"], "routing": ev["routing"]}
    if task == "regression" and "pearson" in ev:
        return {"name": "pearson", "value": ev["pearson"], "routing": ev["routing"]}
    if "loss" in ev:
        return {"name": "eval_loss", "value": ev["loss"], "routing": ev["routing"]}
    return None


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def headline(metrics: dict) -> str:
    """One evaluation's figures on one line."""
    if "accuracy" in metrics:
        return (
            f"accuracy {metrics['accuracy']:.4f}  f1 {metrics['f1_macro']:.4f}  mcc {metrics['mcc']:.4f} "
            f"({metrics['routing']}, {metrics['examples']} ex)"
        )
    if "pearson" in metrics:
        return (
            f"pearson {metrics['pearson']:.4f}  spearman {metrics['spearman']:.4f} "
            f"({metrics['routing']}, {metrics['examples']} ex)"
        )
    if "loss" in metrics:
        return f"loss {metrics['loss']:.4f}  ppl {metrics['perplexity']:.2f} ({metrics['routing']})"
    return "no eval file"


def epoch_line(epoch: int, epochs: int, record: dict) -> str:
    ev = record["eval"]
    shown = f"eval {headline(ev)}" if ev else "no eval file"
    loss = record["train_loss"]
    return (
        f"epoch {epoch}/{epochs}  step {record['step']}  train loss {loss:.4f}  {shown}"
        if loss is not None
        else shown
    )
