"""AdaMix on two more GLUE tasks (issue 10): CoLA (Matthews correlation) and STS-B (regression, Pearson), the
best AdaMix adapter and LoRA arms against their single modules, MiniLM-L6. Not a test: prints tables, writes
JSON lines + a JSON summary + PNG.

The protocol, fixed before any run:
- Splits drawn once per task with SPLIT_SEED from the task's `train.tsv`, written in the task's own format
  (CoLA header-less, so the header-less reader and column positions are exercised): a training pool of
  TRAIN_SIZE and a validation set of VAL_SIZE, disjoint. The test set is the official dev set (CoLA 1,043,
  STS-B 1,500), never used for any choice.
- Arms and their settings come from the SST-2 benchmark (`bench_adamix.py`), unchanged and alike for every arm:
  the single adapter and the single LoRA at their tuned learning rate and epochs, and the AdaMix arm of each
  module with the best validation accuracy in that tuning (`adamix-adapter-2x`, `adamix-lora-2x`). There is no
  per-task tuning (no budget for it on this CPU): every arm is transferred from SST-2 the same way.
- SEEDS seeds per arm; report the metric's mean with a 95 % t-interval and the per-seed paired differences
  (same split, same seed) with their t-interval and the number of seeds won.
- Added on 2026-12-01 after the first two seeds, before the third (it feeds no choice): each single module also
  at its AdaMix arm's epochs (`adapter-6ep`, `lora-6ep`, run after the main plan), because AdaMix-2x trains
  twice as long as the single module and on STS-B the single module's 3 epochs (tuned on SST-2) may stop short:
  the control tells the mixture's effect from the longer schedule's.

    python benchmarks/bench_adamix_glue.py splits      # needs ../shared/data
    python benchmarks/bench_adamix_glue.py run [--device cuda] [--threads 2] [--limit N]
    python benchmarks/bench_adamix_glue.py report

Every run appends one JSON line to `adamix_glue_runs.jsonl`; a re-run skips the runs already there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_adamix import ARMS, BATCH, MAX_LENGTH, WARMUP, WEIGHT_DECAY, chosen, read_runs, t_interval

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT.parent.parent / "shared" / "data" / "glue"
SPLITS = RESULTS / "tmp" / "glue_splits"  # derived from ../shared/data: git-ignored, SPLIT_SEED recreates it
RUNS_FILE = "adamix_glue_runs.jsonl"

SPLIT_SEED = 20261123
TRAIN_SIZE, VAL_SIZE = 1000, 500
SEEDS = (0, 1, 2)
PAIRS = [("adamix-adapter-2x", "adapter"), ("adamix-lora-2x", "lora")]  # (AdaMix arm, its single module)


@dataclass(frozen=True)
class Task:
    folder: str
    header: bool
    kind: str  # classification | regression
    metric: str  # the key of the evaluation result that the report compares
    text_column: str
    pair_column: str | None
    label_column: str


TASKS = {
    "cola": Task(
        "CoLA",
        header=False,
        kind="classification",
        metric="mcc",
        text_column="3",
        pair_column=None,
        label_column="1",
    ),  # fmt: skip
    "stsb": Task(
        "STS-B",
        header=True,
        kind="regression",
        metric="pearson",
        text_column="sentence1",
        pair_column="sentence2",
        label_column="score",
    ),  # fmt: skip
}


@dataclass(frozen=True)
class Run:
    task: str
    arm: str
    lr: float
    epochs: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}|{self.arm}|{self.lr:g}|{self.epochs}|{self.seed}"


# -- splits ------------------------------------------------------------------------------------------------------
def make_splits(data: Path, out: Path) -> dict:
    """Shuffle the raw lines of each task's train.tsv (the header stays on top) and cut train / val."""
    info = {"split_seed": SPLIT_SEED}
    for name, task in TASKS.items():
        lines = (data / task.folder / "train.tsv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
        header, rows = (lines[:1], lines[1:]) if task.header else ([], lines)
        rows = [r for r in rows if r.strip()]
        random.Random(SPLIT_SEED).shuffle(rows)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.tsv").write_text("".join(header + rows[:TRAIN_SIZE]))
        (folder / "val.tsv").write_text("".join(header + rows[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE]))
        (folder / "test.tsv").write_text((data / task.folder / "dev.tsv").read_text(encoding="utf-8-sig"))
        test = len((folder / "test.tsv").read_text().splitlines()) - (1 if task.header else 0)
        info[name] = {"train": TRAIN_SIZE, "val": VAL_SIZE, "test (official dev)": test, "pool": len(rows)}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


# -- one run -----------------------------------------------------------------------------------------------------
def run_one(run: Run, model: str, splits: Path, device: str | None, threads: int) -> dict:
    import torch

    from adamix_deploy.checkpoint import load_checkpoint
    from adamix_deploy.collate import encode_classification, model_input_names
    from adamix_deploy.config import MixtureSpec, TrainOptions
    from adamix_deploy.data import read_classification
    from adamix_deploy.evaluation import evaluate_classification, evaluate_regression
    from adamix_deploy.train import train

    torch.set_num_threads(threads)
    task, arm = TASKS[run.task], ARMS[run.arm]
    folder = splits / run.task
    columns = {"text_column": task.text_column, "pair_column": task.pair_column, "label_column": task.label_column,
               "header": task.header}  # fmt: skip
    spec = MixtureSpec(arm.method, experts=arm.experts, share="up", rank=8, alpha=16.0, bottleneck=16,
                       init="official")  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        options = TrainOptions(
            model=model, task=task.kind, train_file=str(folder / "train.tsv"), output=str(Path(tmp) / "run"),
            mixture=spec, consistency_weight=arm.consistency, epochs=run.epochs, batch_size=BATCH, lr=run.lr,
            weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, max_length=MAX_LENGTH, seed=run.seed,
            train_pooler=True, progress=False, device=device, **columns,
        )  # fmt: skip
        train(options)
        ckpt = load_checkpoint(Path(tmp) / "run")
    train_seconds = time.perf_counter() - started
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_obj, labels = ckpt.model.to(target), ckpt.config["labels"]
    evaluate = evaluate_regression if task.kind == "regression" else evaluate_classification
    regression = task.kind == "regression"
    scores = {}
    for name in ("val", "test"):
        examples = read_classification(folder / f"{name}.tsv", **columns, labels=labels, regression=regression)
        items = encode_classification(ckpt.tokenizer, examples, labels, MAX_LENGTH, model_input_names(model_obj))
        for routing in ["average"] + (["ensemble"] if arm.experts > 1 and name == "test" else []):
            result = evaluate(model_obj, items, ckpt.tokenizer.pad_token_id, routing, batch_size=256)
            scores[f"{name}_{routing}"] = {k: v for k, v in result.items() if k != "routing"}
    return {**asdict(run), "key": run.key, "metric": task.metric, "scores": scores,
            "train_seconds": round(train_seconds, 1), "device": str(target)}  # fmt: skip


# -- the plan ----------------------------------------------------------------------------------------------------
def arm_settings(sst2_results: Path) -> dict[str, tuple[float, int]]:
    """Each arm's (lr, epochs) as tuned on SST-2."""
    sst2 = {r["key"]: r for r in read_runs(sst2_results)}
    settings = {arm: chosen(sst2, arm) for pair in PAIRS for arm in pair}
    missing = [arm for arm, setting in settings.items() if setting is None]
    if missing:
        sys.exit(f"the SST-2 tuning of {', '.join(missing)} is not finished (bench_adamix.py tune)")
    return settings


def plan(settings: dict[str, tuple[float, int]]) -> list[Run]:
    """Seed by seed, pair by pair, so that an interrupted benchmark leaves complete pairs; then the longer-schedule
    controls (each single module at its AdaMix arm's epochs), seed by seed."""
    main = [
        Run(task, arm, *settings[arm], seed) for seed in SEEDS for task in TASKS for pair in PAIRS for arm in pair
    ]
    controls = [Run(task, single, settings[single][0], settings[adamix][1], seed)
                for seed in SEEDS for task in TASKS for adamix, single in PAIRS]  # fmt: skip
    return main + controls


def arm_label(row: dict, settings: dict[str, tuple[float, int]]) -> str:
    """The arm's name, or `<arm>-<epochs>ep` for a run at other epochs than the arm's own (a control)."""
    return row["arm"] if row["epochs"] == settings[row["arm"]][1] else f"{row['arm']}-{row['epochs']}ep"


def comparisons(settings: dict[str, tuple[float, int]]) -> list[tuple[str, str]]:
    """(arm, against) label pairs: AdaMix vs its single module, and vs the single module at AdaMix's epochs."""
    return PAIRS + [(adamix, f"{single}-{settings[adamix][1]}ep") for adamix, single in PAIRS]


def execute(todo: list[Run], args) -> None:
    results = Path(args.results)
    done = {r["key"] for r in read_glue_runs(results)}
    todo = [r for r in todo if r.key not in done][: args.limit or None]
    print(f"{len(todo)} runs to do", flush=True)
    for run in todo:  # one at a time in this process: the 2 cores are the limit, not the process count
        row = run_one(run, args.model, Path(args.splits), args.device, args.threads)
        with (results / RUNS_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{run.key}: test {row['metric']} {row['scores']['test_average'][row['metric']]:.4f} "
              f"({row['train_seconds']} s)", flush=True)  # fmt: skip


def read_glue_runs(results: Path) -> list[dict]:
    file = results / RUNS_FILE
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []


# -- report ------------------------------------------------------------------------------------------------------
def report(args) -> None:
    results = Path(args.results)
    rows = read_glue_runs(results)
    settings = arm_settings(Path(args.sst2_results))
    summary = {"protocol": {"SPLIT_SEED": SPLIT_SEED, "TRAIN_SIZE": TRAIN_SIZE, "VAL_SIZE": VAL_SIZE,
                            "SEEDS": SEEDS, "settings": "transferred from the SST-2 tuning"},
               "tasks": {}}  # fmt: skip
    info = Path(args.splits) / "info.json"
    if info.exists():
        summary["splits"] = json.loads(info.read_text())
    for task_name, task in TASKS.items():
        metric = task.metric
        by_arm: dict[str, dict[int, dict]] = {}
        for r in rows:
            if r["task"] == task_name:
                by_arm.setdefault(arm_label(r, settings), {})[r["seed"]] = r
        entry = {"metric": metric, "arms": {}, "comparisons": []}
        print(f"\n{task.folder} ({metric}, x100; test = official dev)")
        print("| arm | lr | epochs | seeds | val | test (95 % CI) | ensemble test | train s |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, seeds in by_arm.items():
            runs = [seeds[s] for s in sorted(seeds)]
            test = t_interval([100 * r["scores"]["test_average"][metric] for r in runs])
            val = t_interval([100 * r["scores"]["val_average"][metric] for r in runs])
            ensemble = ([100 * r["scores"]["test_ensemble"][metric] for r in runs]
                        if "test_ensemble" in runs[0]["scores"] else None)  # fmt: skip
            entry["arms"][arm] = {"lr": runs[0]["lr"], "epochs": runs[0]["epochs"], "seeds": len(runs),
                                  "val": val, "test": test,
                                  "test_ensemble": t_interval(ensemble) if ensemble else None}  # fmt: skip
            ens = f"{t_interval(ensemble)[0]:.2f}" if ensemble else "-"
            seconds = sorted(r["train_seconds"] for r in runs)[len(runs) // 2]
            print(f"| {arm} | {runs[0]['lr']:g} | {runs[0]['epochs']} | {len(runs)} | {val[0]:.2f} | "
                  f"{test[0]:.2f} [{test[1]:.2f}, {test[2]:.2f}] | {ens} | {seconds} |")  # fmt: skip
        print("\n| AdaMix arm vs single | paired seeds | mean test difference (95 % CI) | seeds won |")
        print("|---|---|---|---|")
        for arm, other in comparisons(settings):
            seeds = sorted(set(by_arm.get(arm, {})) & set(by_arm.get(other, {})))
            if len(seeds) < 2:
                continue
            diffs = [100 * (by_arm[arm][s]["scores"]["test_average"][metric]
                            - by_arm[other][s]["scores"]["test_average"][metric]) for s in seeds]  # fmt: skip
            mean, lo, hi = t_interval(diffs)
            wins = sum(d > 0 for d in diffs)
            entry["comparisons"].append({"arm": arm, "against": other, "seeds": seeds, "differences": diffs,
                                         "test": (mean, lo, hi), "wins": wins})  # fmt: skip
            print(
                f"| {arm} vs {other} | {len(seeds)} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | {wins}/{len(seeds)} |"
            )
        summary["tasks"][task_name] = entry
    (results / "adamix_glue.json").write_text(json.dumps(summary, indent=1))
    _plot(summary, results / "adamix_glue.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, e in summary["tasks"].items() if e["arms"]]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        entry = summary["tasks"][task]
        arms = list(entry["arms"])
        means = [entry["arms"][a]["test"][0] for a in arms]
        lows = [m - entry["arms"][a]["test"][1] for a, m in zip(arms, means, strict=True)]
        highs = [entry["arms"][a]["test"][2] - m for a, m in zip(arms, means, strict=True)]
        ax.errorbar(range(len(arms)), means, yerr=[lows, highs], fmt="o", capsize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=25, ha="right")
        ax.set_ylabel(f"{TASKS[task].folder} {entry['metric']} x100 (official dev)")
        ax.set_title("mean over seeds, 95 % t-interval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["splits", "run", "report"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--splits", default=str(SPLITS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--sst2-results", default=str(RESULTS), help="where the SST-2 tuning runs are")
    parser.add_argument("--model", default="minilm", help="packaged name or folder")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--limit", type=int, default=0, help="at most this many runs now (0: all)")
    args = parser.parse_args()
    if args.phase == "splits":
        if not Path(args.data).is_dir():
            sys.exit(f"skipped: {args.data} not found (the real data sets live in ../shared/data)")
        print(json.dumps(make_splits(Path(args.data), Path(args.splits)), indent=1))
    elif args.phase == "report":
        report(args)
    else:
        if not (Path(args.splits) / "cola" / "train.tsv").exists():
            sys.exit(f"no splits in {args.splits}: run `splits` first")
        Path(args.results).mkdir(parents=True, exist_ok=True)
        execute(plan(arm_settings(Path(args.sst2_results))), args)


if __name__ == "__main__":
    main()
