"""CoLA (Matthews correlation) and STS-B (regression, Pearson) with MiniLM-L6: the best AdaMix adapter and LoRA
arms of the SST-2 tuning against their single modules, every setting transferred from SST-2.

The protocol, fixed before any run:
- Splits drawn once per task with SPLIT_SEED from the task's `train.tsv`, written in the task's own format
  (CoLA header-less, so the header-less reader and column positions are exercised): a training pool of
  TRAIN_SIZE and a validation set of VAL_SIZE, disjoint. The test set is the official dev set (CoLA 1,043,
  STS-B 1,500), never used for any choice.
- Arms and their settings come from the SST-2 tuning (`sst2.py`), unchanged and alike for every arm: the single
  adapter and the single LoRA at their tuned learning rate and epochs, and the AdaMix arm of each module with
  the best validation accuracy in that tuning (`adamix-adapter-2x`, `adamix-lora-2x`). There is no per-task
  tuning (no budget for it on this CPU): every arm is transferred from SST-2 the same way.
- SEEDS seeds per arm; report the metric's mean with a 95 % t-interval and the per-seed paired differences
  (same split, same seed) with their t-interval and the number of seeds won.
- Added after the first two seeds, before the third (it feeds no choice): each single module also at its
  AdaMix arm's epochs (`adapter-6ep`, `lora-6ep`, run after the main plan), because AdaMix-2x trains twice as
  long as the single module and on STS-B the single module's 3 epochs (tuned on SST-2) may stop short: the
  control tells the mixture's effect from the longer schedule's.

Both tasks share the runs file `adamix_glue_runs.jsonl` (keys start with the task), the summary
`adamix_glue.json` and the plot `adamix_glue.png`.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.adamix_quality import sst2
from benchmarks.common.pages import Markdown
from benchmarks.common.paths import WORK
from benchmarks.common.plots import means_with_intervals, pyplot, save
from benchmarks.common.stats import median_of, paired, t_interval
from benchmarks.common.trials import Protocol, Trial, read_records

SPLITS = WORK / "glue_splits"  # derived from ../shared/data: git-ignored, SPLIT_SEED recreates it
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

    @property
    def columns(self) -> dict:
        return {"text_column": self.text_column, "pair_column": self.pair_column,
                "label_column": self.label_column, "header": self.header}  # fmt: skip


TASKS = {
    "cola": Task("CoLA", header=False, kind="classification", metric="mcc", text_column="3", pair_column=None,
                 label_column="1"),
    "stsb": Task("STS-B", header=True, kind="regression", metric="pearson", text_column="sentence1",
                 pair_column="sentence2", label_column="score"),
}  # fmt: skip


def make_splits(data: Path, out: Path, name: str) -> dict:
    """Shuffle the raw lines of the task's train.tsv (the header stays on top) and cut train / val."""
    task = TASKS[name]
    lines = (data / "glue" / task.folder / "train.tsv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    header, rows = (lines[:1], lines[1:]) if task.header else ([], lines)
    rows = [r for r in rows if r.strip()]
    random.Random(SPLIT_SEED).shuffle(rows)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text("".join(header + rows[:TRAIN_SIZE]))
    (folder / "val.tsv").write_text("".join(header + rows[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE]))
    (folder / "test.tsv").write_text((data / "glue" / task.folder / "dev.tsv").read_text(encoding="utf-8-sig"))
    test = len((folder / "test.tsv").read_text().splitlines()) - (1 if task.header else 0)
    info_path = out / "info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"split_seed": SPLIT_SEED}
    info[name] = {"train": TRAIN_SIZE, "val": VAL_SIZE, "test (official dev)": test, "pool": len(rows)}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def arm_settings(sst2_results: Path) -> dict[str, tuple[float, int]]:
    """Each arm's (lr, epochs) as tuned on SST-2."""
    done = {r["key"]: r for r in read_records(sst2_results / sst2.SST2.runs_file)}
    settings = {arm: sst2.chosen(done, arm) for pair in PAIRS for arm in pair}
    missing = [arm for arm, setting in settings.items() if setting is None]
    if missing:
        raise SystemExit(f"the SST-2 tuning of {', '.join(missing)} is not finished (run --task sst2)")
    return settings


def arm_label(row: dict, settings: dict[str, tuple[float, int]]) -> str:
    """The arm's name, or `<arm>-<epochs>ep` for a run at other epochs than the arm's own (a control)."""
    return row["arm"] if row["epochs"] == settings[row["arm"]][1] else f"{row['arm']}-{row['epochs']}ep"


def comparisons(settings: dict[str, tuple[float, int]]) -> list[tuple[str, str]]:
    """(arm, against) label pairs: AdaMix vs its single module, and vs the single module at AdaMix's epochs."""
    return PAIRS + [(adamix, f"{single}-{settings[adamix][1]}ep") for adamix, single in PAIRS]


class Glue(Protocol):
    runs_file = "adamix_glue_runs.jsonl"
    summary_file, plot_file = "adamix_glue.json", "adamix_glue.png"
    default_splits, default_model, default_threads = SPLITS, "minilm", 2

    def __init__(self, task: str):
        self.task = task

    def key(self, trial: Trial) -> str:
        return f"{self.task}|{trial.arm}|{trial.lr:g}|{trial.epochs}|{trial.seed}"

    def record(self, trial: Trial) -> dict:
        fields = {k: v for k, v in asdict(trial).items() if k != "phase"}  # every trial here is final
        return {"task": self.task, **fields, "key": self.key(trial)}

    def splits(self, options) -> dict:
        return make_splits(Path(options.data), Path(options.splits), self.task)

    def prepare(self, options) -> dict:
        if not (Path(options.splits) / self.task / "train.tsv").exists():
            raise SystemExit(f"no splits in {options.splits}: run `splits --task {self.task}` first")
        return arm_settings(Path(options.sst2_results))

    def plan(self, done: dict, options) -> list[Trial]:
        """Seed by seed, pair by pair, so that an interrupted benchmark leaves complete pairs; then the
        longer-schedule controls (each single module at its AdaMix arm's epochs), seed by seed."""
        settings = arm_settings(Path(options.sst2_results))
        main = [Trial("final", arm, *settings[arm], seed) for seed in SEEDS for pair in PAIRS for arm in pair]
        controls = [Trial("final", single, settings[single][0], settings[adamix][1], seed)
                    for seed in SEEDS for adamix, single in PAIRS]  # fmt: skip
        return main + controls

    def run_one(self, trial: Trial, settings: dict, options) -> dict:
        import torch

        from adamix_deploy.checkpoint import load_checkpoint
        from adamix_deploy.config import MixtureSpec, TrainOptions
        from adamix_deploy.routing_comparison import compare_routings
        from adamix_deploy.train import train

        torch.set_num_threads(options.threads)
        task, arm = TASKS[self.task], sst2.ARMS[trial.arm]
        folder = Path(options.splits) / self.task
        spec = MixtureSpec(arm.method, experts=arm.experts, share="up", rank=8, alpha=16.0, bottleneck=16,
                           init="official")  # fmt: skip
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train_options = TrainOptions(
                model=options.model, task=task.kind, train_file=str(folder / "train.tsv"),
                output=str(Path(tmp) / "run"), mixture=spec, consistency_weight=arm.consistency, epochs=trial.epochs,
                batch_size=sst2.BATCH, lr=trial.lr, weight_decay=sst2.WEIGHT_DECAY, warmup_ratio=sst2.WARMUP,
                max_length=sst2.MAX_LENGTH, seed=trial.seed, train_pooler=True, progress=False,
                device=options.device, **task.columns,
            )  # fmt: skip
            train(train_options)
            checkpoint = load_checkpoint(Path(tmp) / "run")
        train_seconds = time.perf_counter() - started
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        checkpoint.model.to(device)
        scores = {}
        for name in ("val", "test"):
            routings = ["average"] + (["ensemble"] if arm.experts > 1 and name == "test" else [])
            result = compare_routings(checkpoint, folder / f"{name}.tsv", routings)
            for routing, figures in result["routings"].items():
                scores[f"{name}_{routing}"] = {k: v for k, v in figures.items() if k != "routing"}
        return {**self.record(trial), "metric": task.metric, "scores": scores,
                "train_seconds": round(train_seconds, 1), "device": str(device)}  # fmt: skip

    def describe(self, row: dict) -> str:
        value = row["scores"]["test_average"][row["metric"]]
        return f"{row['key']}: test {row['metric']} {value:.4f} ({row['train_seconds']} s)"

    def report(self, rows: list[dict], options, previous: dict) -> tuple[dict, Markdown]:
        """Both tasks (they share the runs file)."""
        settings = arm_settings(Path(options.sst2_results))
        summary = {"protocol": {"SPLIT_SEED": SPLIT_SEED, "TRAIN_SIZE": TRAIN_SIZE, "VAL_SIZE": VAL_SIZE,
                                "SEEDS": SEEDS, "settings": "transferred from the SST-2 tuning"},
                   "tasks": {}}  # fmt: skip
        info = Path(options.splits) / "info.json"
        if info.exists() or "splits" in previous:
            summary["splits"] = json.loads(info.read_text()) if info.exists() else previous["splits"]
        arm_rows, comparison_rows = [], []
        order = {arm: (i, rank) for i, (adamix, single) in enumerate(PAIRS)
                 for rank, arm in enumerate((single, f"{single}-{settings[adamix][1]}ep", adamix))}  # fmt: skip
        for task_name, task in TASKS.items():
            metric = task.metric
            by_arm: dict[str, dict[int, dict]] = {}
            for r in rows:
                if r["task"] == task_name:
                    by_arm.setdefault(arm_label(r, settings), {})[r["seed"]] = r
            entry = {"metric": metric, "arms": {}, "comparisons": []}
            label = f"{task.folder} ({'MCC' if metric == 'mcc' else metric.capitalize()})"
            for arm, seeds in by_arm.items():
                runs = [seeds[s] for s in sorted(seeds)]
                test = t_interval([100 * r["scores"]["test_average"][metric] for r in runs])
                val = t_interval([100 * r["scores"]["val_average"][metric] for r in runs])
                ensemble = ([100 * r["scores"]["test_ensemble"][metric] for r in runs]
                            if "test_ensemble" in runs[0]["scores"] else None)  # fmt: skip
                entry["arms"][arm] = {"lr": runs[0]["lr"], "epochs": runs[0]["epochs"], "seeds": len(runs),
                                      "val": val, "test": test,
                                      "test_ensemble": t_interval(ensemble) if ensemble else None}  # fmt: skip
                arm_rows.append((task_name, order.get(arm, (len(PAIRS), 0)), [
                    label, arm, f"{runs[0]['lr']:g}", runs[0]["epochs"], len(runs), f"{val[0]:.2f}",
                    f"{test[0]:.2f} [{test[1]:.2f}, {test[2]:.2f}]",
                    f"{t_interval(ensemble)[0]:.2f}" if ensemble else "-",
                    median_of([r["train_seconds"] for r in runs]),
                ]))  # fmt: skip
            for arm, other in comparisons(settings):
                seeds = sorted(set(by_arm.get(arm, {})) & set(by_arm.get(other, {})))
                if len(seeds) < 2:
                    continue
                diffs = [100 * (by_arm[arm][s]["scores"]["test_average"][metric]
                                - by_arm[other][s]["scores"]["test_average"][metric]) for s in seeds]  # fmt: skip
                result = paired(diffs)
                mean, lo, hi = result["interval"]
                entry["comparisons"].append({"arm": arm, "against": other, "seeds": seeds, "differences": diffs,
                                             "test": result["interval"], "wins": result["wins"]})  # fmt: skip
                comparison_rows.append([task.folder, f"{arm} vs {other}", len(seeds),
                                        ", ".join(f"{d:+.2f}" for d in diffs),
                                        f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]", f"{result['wins']}/{len(seeds)}"])  # fmt: skip
            summary["tasks"][task_name] = entry
        out = Markdown()
        table, last = [], None
        for task_name, _, cells in sorted(arm_rows, key=lambda r: (list(TASKS).index(r[0]), r[1])):
            table.append(["" if task_name == last else cells[0], *cells[1:]])
            last = task_name
        out.table(["task (metric x100)", "arm", "lr", "epochs", "seeds", "val", "test (95 % CI)", "ensemble test",
                   "train s"], table)  # fmt: skip
        out()
        seeds_header = ", ".join(str(s) for s in SEEDS)
        out.table(["task", "AdaMix arm vs", "paired seeds", f"per seed ({seeds_header})",
                   "mean test difference (95 % CI)", "seeds won"], comparison_rows)  # fmt: skip
        return summary, out

    def plot(self, summary: dict, path: Path) -> None:
        tasks = [t for t, e in summary["tasks"].items() if e["arms"]]
        if not tasks:
            return
        plt = pyplot()
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            entry = summary["tasks"][task]
            arms = list(entry["arms"])
            means_with_intervals(ax, arms, [entry["arms"][a]["test"] for a in arms], rotation=25)
            ax.set_ylabel(f"{TASKS[task].folder} {entry['metric']} x100 (official dev)")
            ax.set_title("mean over seeds, 95 % t-interval")
        save(fig, path, 120)
