"""SST-2 with MiniLM-L6: AdaMix against the single module of the same serving cost, a consistency-only control
and PEFT LoRA, every arm tuned on a validation set.

The protocol, fixed before any run:
- Splits drawn once from GLUE SST-2 `train.tsv` with SPLIT_SEED, disjoint: a training pool (1,000), a
  validation set (1,000) and a test set (5,000). SST-2's train split holds phrases cut from the same sentences,
  so validation and test sentences that occur inside a training sentence are dropped (and replaced by the next
  candidates). The official dev set (872) is reported too.
- Arms (all with the same recipe settings: weight decay 0.1, warm-up 6 %, the pooler trained with the head,
  batch 32, max length 64; adapters 16 wide after each FFN, LoRA r 8 / alpha 16 on query and value):
    adapter, lora                   the single module (M=1), one pass per step
    adapter+consistency, ...        M=1 with the consistency loss (two passes that differ by dropout only:
                                    the R-Drop-style control, to tell the mixture from the regulariser)
    adamix-adapter, adamix-lora     M=4, shared up / B, official initialisation, consistency weight 1,
                                    trained for the single module's tuned epochs (the same budget) ...
    adamix-...-2x                   ... and for twice them (the paper: AdaMix needs 1-2x the iterations)
    peft-lora                       the real `peft` library, r 8 / alpha 16 on query and value
- Tuning on the validation set only: every free arm over LRS x EPOCHS, the budget-bound AdaMix arms over LRS
  at their fixed epochs, each configuration with TUNING_SEEDS (never reused); the best mean validation
  accuracy wins (ties: fewer epochs, then the smaller learning rate).
- Final: each arm at its chosen setting with FINAL_SEEDS, once every arm is tuned; accuracy on the 5,000 test
  sentences and the official dev set with `average` routing (the merge: one module's cost) and, for AdaMix,
  `ensemble` (both through `adamix_deploy.routing_comparison.compare_routings`, as `adamix-eval` scores).
  Report: mean with a 95 % t-interval per arm; per-seed paired differences (same split, same seed) with
  their mean, 95 % t-interval and the count of seeds won.

Runs file `adamix_sst2_runs.jsonl`, summary `adamix_sst2.json`, plot `adamix_sst2.png`.
"""

from __future__ import annotations

import csv
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.adamix_quality.epochwise import (
    selection_header,
    selection_rows,
    selection_study,
    train_scoring_epochs,
)
from benchmarks.common.pages import Markdown
from benchmarks.common.paths import WORK
from benchmarks.common.plots import means_with_intervals, paired_differences, pyplot, save
from benchmarks.common.stats import median_of, paired, t_interval
from benchmarks.common.trials import Protocol, Trial

SPLITS = WORK / "sst2_splits"  # derived from ../shared/data, so never committed; SPLIT_SEED recreates them
SPLIT_SEED = 20261123
TRAIN_SIZE, VAL_SIZE, TEST_SIZE = 1000, 1000, 5000
# Sized for a 2-core CPU: one tuning seed, a 2 x 2 grid. A MiniLM step (batch 32, length 64) takes about 0.4 s
# with one pass and 0.8 s with AdaMix's two.
TUNING_SEEDS = (100,)
FINAL_SEEDS = tuple(range(8))
LRS = (1e-3, 3e-3)
EPOCHS = (3, 8)
BATCH, MAX_LENGTH, WEIGHT_DECAY, WARMUP = 32, 64, 0.1, 0.06
SCORES = ("accuracy", "f1_macro", "mcc", "examples")


@dataclass(frozen=True)
class Arm:
    method: str  # adapter | lora | peft-lora
    experts: int = 1
    consistency: float = 0.0
    budget_of: str | None = None  # epochs fixed to this arm's tuned epochs ...
    budget: int = 1  # ... times this


ARMS = {
    "adapter": Arm("adapter"),
    "adapter+consistency": Arm("adapter", consistency=1.0),
    "adamix-adapter": Arm("adapter", 4, 1.0, "adapter", 1),
    "adamix-adapter-2x": Arm("adapter", 4, 1.0, "adapter", 2),
    "lora": Arm("lora"),
    "lora+consistency": Arm("lora", consistency=1.0),
    "adamix-lora": Arm("lora", 4, 1.0, "lora", 1),
    "adamix-lora-2x": Arm("lora", 4, 1.0, "lora", 2),
    "peft-lora": Arm("peft-lora"),
}
COMPARISONS = [  # (arm, against): the paired differences the report shows
    ("adamix-adapter", "adapter"),
    ("adamix-adapter-2x", "adapter"),
    ("adamix-adapter", "adapter+consistency"),
    ("adamix-adapter-2x", "adapter+consistency"),
    ("adamix-lora", "lora"),
    ("adamix-lora-2x", "lora"),
    ("adamix-lora", "lora+consistency"),
    ("adamix-lora-2x", "lora+consistency"),
    ("adamix-lora", "peft-lora"),
    ("adamix-lora-2x", "peft-lora"),
    ("lora", "peft-lora"),
]
# The selection study (phase "epochs"): these pairs rerun at their final settings and seeds, scored after every
# epoch, so that the report can pick the checkpoint three ways (`epochwise.py`). Pair by pair, seed by seed.
SELECTION_PAIRS = [("adamix-lora-2x", "lora"), ("adamix-adapter-2x", "adapter")]
SELECTION_SETS = ("val", "test", "dev")


# -- splits ------------------------------------------------------------------------------------------------------
def make_splits(data: Path, out: Path) -> dict:
    rows = list(csv.DictReader((data / "glue/SST-2/train.tsv").open(encoding="utf-8-sig"), delimiter="\t",
                               quoting=csv.QUOTE_NONE))  # fmt: skip
    rng = random.Random(SPLIT_SEED)
    rng.shuffle(rows)
    train = rows[:TRAIN_SIZE]
    inside_train = " \n ".join(r["sentence"].strip() for r in train)
    seen = {r["sentence"].strip() for r in train}
    val, test, dropped = [], [], 0
    for row in rows[TRAIN_SIZE:]:
        text = row["sentence"].strip()
        if text in seen or text in inside_train:  # a phrase of a training sentence would leak its label
            dropped += 1
            continue
        seen.add(text)
        (val if len(val) < VAL_SIZE else test).append(row)
        if len(test) == TEST_SIZE:
            break
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val), ("test", test)):
        with (out / f"{name}.tsv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["sentence", "label"], delimiter="\t", quoting=csv.QUOTE_NONE,
                                    escapechar="\\", extrasaction="ignore")  # fmt: skip
            writer.writeheader()
            writer.writerows(part)
    (out / "dev.tsv").write_text((data / "glue/SST-2/dev.tsv").read_text(encoding="utf-8-sig"))
    info = {"split_seed": SPLIT_SEED, "train": len(train), "val": len(val), "test": len(test),
            "dev": sum(1 for _ in (out / "dev.tsv").open()) - 1, "dropped_as_phrases_of_training": dropped}  # fmt: skip
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


# -- the plan ----------------------------------------------------------------------------------------------------
def chosen(done: dict, arm: str) -> tuple[float, int] | None:
    """(lr, epochs) with the best mean validation accuracy over the tuning seeds; None until all ran."""
    settings: dict[tuple[float, int], list[float]] = {}
    for row in done.values():
        if row["phase"] == "tune" and row["arm"] == arm:
            settings.setdefault((row["lr"], row["epochs"]), []).append(row["scores"]["val_average"]["accuracy"])
    arm_spec = ARMS[arm]
    expected = len(LRS) * (1 if arm_spec.budget_of else len(EPOCHS))
    complete = {k: v for k, v in settings.items() if len(v) == len(TUNING_SEEDS)}
    if len(complete) < expected:
        return None
    return max(complete, key=lambda k: (sum(complete[k]) / len(complete[k]), -k[1], -k[0]))


def tuning_plan(done: dict) -> list[Trial]:
    """Free arms first (their chosen epochs fix the budget-bound arms' epochs)."""
    plan = []
    for name, arm in ARMS.items():
        if arm.budget_of is not None:
            base = chosen(done, arm.budget_of)
            if base is None:
                continue  # its single module is not tuned yet: the next round adds these
            grid = [(lr, base[1] * arm.budget) for lr in LRS]
        else:
            grid = [(lr, epochs) for epochs in EPOCHS for lr in LRS]
        plan += [Trial("tune", name, lr, epochs, seed) for lr, epochs in grid for seed in TUNING_SEEDS]
    return plan


def final_plan(done: dict) -> list[Trial]:
    """Seed by seed across the arms, so that an interrupted run leaves complete pairs to compare."""
    settings = {name: chosen(done, name) for name in ARMS}
    return [Trial("final", name, *setting, seed) for seed in FINAL_SEEDS for name, setting in settings.items()]


def selection_plan(done: dict) -> list[Trial]:
    """The finals of SELECTION_PAIRS again, scored after every epoch: pair by pair, seed by seed."""
    return [Trial("epochs", arm, *chosen(done, arm), seed)
            for pair in SELECTION_PAIRS for seed in FINAL_SEEDS for arm in pair]  # fmt: skip


class SST2(Protocol):
    runs_file = "adamix_sst2_runs.jsonl"
    summary_file, plot_file = "adamix_sst2.json", "adamix_sst2.png"
    default_splits, default_model, default_threads = SPLITS, "minilm", 2

    def splits(self, options) -> dict:
        return make_splits(Path(options.data), Path(options.splits))

    def prepare(self, options) -> Path:
        splits = Path(options.splits)
        if not (splits / "train.tsv").exists():
            raise SystemExit(f"no splits in {splits}: run `splits --task sst2` first")
        return splits

    def plan(self, done: dict, options) -> list[Trial]:
        """Tuning (in rounds: the budget-bound arms once their single module is chosen), then the finals."""
        tuning = tuning_plan(done)
        if any(t.key not in done for t in tuning) or any(chosen(done, arm) is None for arm in ARMS):
            return tuning
        finals = final_plan(done)
        return finals if any(t.key not in done for t in finals) else selection_plan(done)

    def run_one(self, trial: Trial, splits: Path, options) -> dict:
        """Train one arm at one setting and score it (in this process or a worker)."""
        import torch

        from adamix_deploy.routing_comparison import compare_routings

        torch.set_num_threads(options.threads)
        arm = ARMS[trial.arm]
        if trial.phase == "epochs":
            return self._run_epochs(trial, arm, splits, options)
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        sets = ["val"] + (["test", "dev"] if trial.phase == "final" else [])
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            if arm.method == "peft-lora":
                model, tokenizer, labels = _train_peft(trial, options.model, splits, device)
                train_seconds = time.perf_counter() - started
                scores = _peft_scores(model, tokenizer, labels, splits, sets)
            else:
                checkpoint = _train_ours(trial, arm, options.model, splits, options.device, Path(tmp))
                checkpoint.model.to(device)
                train_seconds = time.perf_counter() - started
                scores = {}
                for name in sets:
                    routings = ["average"] + (["ensemble"] if arm.experts > 1 and name != "val" else [])
                    result = compare_routings(checkpoint, splits / f"{name}.tsv", routings)
                    for routing, figures in result["routings"].items():
                        scores[f"{name}_{routing}"] = {k: figures[k] for k in SCORES}
        return {**self.record(trial), "scores": scores, "train_seconds": round(train_seconds, 1),
                "device": str(device)}  # fmt: skip

    def _run_epochs(self, trial: Trial, arm: Arm, splits: Path, options) -> dict:
        """One run scored on every set after every epoch (`average` routing: the merged model). The sets are
        encoded once and sorted by length, so that a batch pads little (7 sets of 6,872 sentences a run)."""
        from adamix_deploy.collate import encode_classification, model_input_names
        from adamix_deploy.data import read_like_checkpoint
        from adamix_deploy.evaluation import evaluate_classification

        encoded: dict[str, list] = {}

        def score(checkpoint) -> dict:
            out = {}
            for name in SELECTION_SETS:
                if name not in encoded:
                    examples = read_like_checkpoint(splits / f"{name}.tsv", checkpoint.config)
                    items = encode_classification(checkpoint.tokenizer, examples, checkpoint.config.labels,
                                                  MAX_LENGTH, model_input_names(checkpoint.model))  # fmt: skip
                    encoded[name] = sorted(items, key=lambda item: len(item["input_ids"]))
                result = evaluate_classification(
                    checkpoint.model, encoded[name], checkpoint.tokenizer.pad_token_id
                )
                out[name] = {k: result[k] for k in SCORES}
            return out

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            steps_per_epoch = math.ceil(TRAIN_SIZE / BATCH)
            summary, per_epoch = train_scoring_epochs(
                _options(trial, arm, options.model, splits, options.device, Path(tmp)), steps_per_epoch, score
            )
        return {**self.record(trial), "per_epoch": per_epoch, "train_seconds": summary["train_seconds"],
                "wall_seconds": round(time.perf_counter() - started, 1), "threads": options.threads}  # fmt: skip

    def describe(self, row: dict) -> str:
        if row["phase"] == "epochs":
            accuracy = " ".join(
                f"{e['val']['accuracy']:.3f}/{e['test']['accuracy']:.3f}" for e in row["per_epoch"]
            )
            return f"{row['key']}: val/test by epoch {accuracy} ({row['wall_seconds']} s)"
        return f"{row['key']}: val {row['scores']['val_average']['accuracy']:.4f} ({row['train_seconds']} s)"

    def report(self, rows: list[dict], options, previous: dict) -> tuple[dict, Markdown]:
        done = {r["key"]: r for r in rows}
        info = Path(options.splits) / "info.json"
        summary = {"protocol": {k: globals()[k] for k in ("SPLIT_SEED", "TRAIN_SIZE", "VAL_SIZE", "TEST_SIZE",
                   "TUNING_SEEDS", "FINAL_SEEDS", "LRS", "EPOCHS", "BATCH", "MAX_LENGTH", "WEIGHT_DECAY", "WARMUP")},
                   "splits": json.loads(info.read_text()) if info.exists() else previous.get("splits"),
                   "arms": {}, "comparisons": []}  # fmt: skip
        out = Markdown()
        table = []
        finals: dict[str, dict[int, dict]] = {}
        for name in ARMS:
            setting = chosen(done, name)
            runs = [r for r in done.values() if r["phase"] == "final" and r["arm"] == name]
            finals[name] = {r["seed"]: r for r in runs}
            tuning = [r["scores"]["val_average"]["accuracy"] for r in done.values()
                      if r["phase"] == "tune" and r["arm"] == name and setting and (r["lr"], r["epochs"]) == setting]  # fmt: skip
            entry = {
                "chosen": setting,
                "tuning_val": sum(tuning) / len(tuning) if tuning else None,
                "seeds": len(runs),
            }
            if runs:
                for split in ("test", "dev"):
                    entry[split] = t_interval([100 * r["scores"][f"{split}_average"]["accuracy"] for r in runs])
                if "test_ensemble" in runs[0]["scores"]:
                    entry["test_ensemble"] = t_interval(
                        [100 * r["scores"]["test_ensemble"]["accuracy"] for r in runs]
                    )
                entry["train_seconds_median"] = median_of([r["train_seconds"] for r in runs])
            summary["arms"][name] = entry
            if entry["tuning_val"] is None:
                table.append([name, "not tuned yet", "", "", "", "", "", "", ""])
                continue
            table.append([name, setting[0], setting[1], f"{100 * entry['tuning_val']:.2f}", len(runs),
                          _cell(entry, "test"), _cell(entry, "dev"), _cell(entry, "test_ensemble"),
                          entry.get("train_seconds_median", "-")])  # fmt: skip
        out.table(["arm", "lr", "epochs", "val (tuning)", "seeds", "test 5,000 (95 % CI)", "dev 872 (95 % CI)",
                   "ensemble test", "train s"], table)  # fmt: skip
        out()
        table = []
        for arm, other in COMPARISONS:
            seeds = sorted(set(finals[arm]) & set(finals[other]))
            if len(seeds) < 2:
                continue
            diff = {split: [100 * (finals[arm][s]["scores"][f"{split}_average"]["accuracy"]
                                   - finals[other][s]["scores"][f"{split}_average"]["accuracy"]) for s in seeds]
                    for split in ("test", "dev")}  # fmt: skip
            test, dev = paired(diff["test"]), paired(diff["dev"])
            summary["comparisons"].append({"arm": arm, "against": other, "seeds": seeds, "test_differences": diff["test"],
                                           "test": test["interval"], "dev": dev["interval"], "wins": test["wins"]})  # fmt: skip
            table.append([f"{arm} vs {other}", len(seeds), _signed(test["interval"]), f"{test['wins']}/{len(seeds)}",
                          _signed(dev["interval"])])  # fmt: skip
        out.table(["AdaMix arm vs", "paired seeds", "mean test difference (95 % CI)", "seeds won",
                   "dev difference (95 % CI)"], table)  # fmt: skip
        self._report_selection(done, summary, out)
        return summary, out

    def _report_selection(self, done: dict, summary: dict, out: Markdown) -> None:
        """The selection study: each pair picked three ways, reported on the test split and on the dev set."""
        summary["selection"] = []
        for arm, other in SELECTION_PAIRS:
            runs = {name: {r["seed"]: r["per_epoch"] for r in done.values()
                           if r["phase"] == "epochs" and r["arm"] == name} for name in (arm, other)}  # fmt: skip
            if len(set(runs[arm]) & set(runs[other])) < 2:
                continue
            for reported in ("test", "dev"):
                study = selection_study(runs, arm, other, reported, "accuracy", True, scale=100)
                summary["selection"].append({"arm": arm, "against": other, **study})
                out()
                out.table(selection_header(study, arm, other), selection_rows(study, arm, other))
            # the last epoch of an epoch-by-epoch run against the plain final run of the same setting and seed
            gaps = [abs(done[f"final|{name}|{r['lr']:g}|{r['epochs']}|{r['seed']}"]["scores"]["test_average"]
                        ["accuracy"] - r["per_epoch"][-1]["test"]["accuracy"])
                    for name in (arm, other) for r in done.values()
                    if r["phase"] == "epochs" and r["arm"] == name]  # fmt: skip
            out(f"\n{arm}, {other}: last epoch of the epoch-by-epoch runs against the final runs of the same seeds, "
                f"largest test accuracy difference {100 * max(gaps):.2f} points ({len(gaps)} runs)\n")  # fmt: skip

    def plot(self, summary: dict, path: Path) -> None:
        arms = [a for a, e in summary["arms"].items() if "test" in e]
        comparisons = summary["comparisons"]
        if not arms:
            return
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        means_with_intervals(left, arms, [summary["arms"][a]["test"] for a in arms])
        left.set_ylabel("SST-2 test accuracy, 5,000 sentences (%)")
        left.set_title("mean over seeds, 95 % t-interval")
        for i, c in enumerate(comparisons):
            paired_differences(right, i, c["test_differences"], c["test"])
        right.axhline(0, color="grey", lw=0.8)
        right.set_xticks(range(len(comparisons)), [f"{c['arm']}\nvs {c['against']}" for c in comparisons],
                         rotation=60, ha="right", fontsize=7)  # fmt: skip
        right.set_ylabel("paired test difference per seed (points)")
        right.set_title("AdaMix minus the other arm")
        save(fig, path, 120)


def _cell(entry: dict, key: str) -> str:
    if key not in entry:
        return "-"
    mean, lo, hi = entry[key]
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _signed(interval) -> str:
    mean, lo, hi = interval
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


# -- training ----------------------------------------------------------------------------------------------------
def _train_ours(trial: Trial, arm: Arm, model: str, splits: Path, device: str | None, tmp: Path):
    from adamix_deploy.checkpoint import load_checkpoint
    from adamix_deploy.train import train

    train(_options(trial, arm, model, splits, device, tmp))
    return load_checkpoint(tmp / "run")


def _options(trial: Trial, arm: Arm, model: str, splits: Path, device: str | None, tmp: Path):
    """The TrainOptions of one of our arms (every arm but PEFT's), writing to ``tmp / "run"``."""
    from adamix_deploy.config import MixtureSpec, TrainOptions

    spec = MixtureSpec(arm.method, experts=arm.experts, share="up", rank=8, alpha=16.0, bottleneck=16,
                       init="official")  # fmt: skip
    return TrainOptions(
        model=model, task="classification", train_file=str(splits / "train.tsv"), output=str(tmp / "run"),
        mixture=spec, consistency_weight=arm.consistency, epochs=trial.epochs, batch_size=BATCH, lr=trial.lr,
        weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, max_length=MAX_LENGTH, seed=trial.seed,
        train_pooler=True, progress=False, device=device,
    )  # fmt: skip


def _train_peft(trial: Trial, model: str, splits: Path, device):
    """PEFT's LoRA through the same data, schedule, optimizer and clipping as our single-pass arms."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from adamix_deploy.collate import collate, encode_classification, model_input_names
    from adamix_deploy.data import label_set, read_classification
    from adamix_deploy.packaged_models import resolve_model

    torch.manual_seed(trial.seed)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = read_classification(splits / "train.tsv")
    labels = label_set(examples)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                        target_modules=["query", "value"], modules_to_save=["classifier", "pooler"])  # fmt: skip
    peft_model = get_peft_model(base, config).to(device)
    items = encode_classification(tokenizer, examples, labels, MAX_LENGTH, model_input_names(base))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=trial.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(items) / BATCH)
    total = steps_per_epoch * trial.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP * total), total)
    for epoch in range(trial.epochs):
        peft_model.train()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(trial.seed + epoch))
        for index in range(steps_per_epoch):
            chunk = order[index * BATCH : (index + 1) * BATCH]
            batch = collate([items[i] for i in chunk], tokenizer.pad_token_id, device)
            loss = torch.nn.functional.cross_entropy(
                peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(), batch["labels"]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
    return peft_model.eval(), tokenizer, labels


def _peft_scores(model, tokenizer, labels: list[str], splits: Path, sets: list[str]) -> dict:
    """A PEFT model is no mixture checkpoint: scored with the same metric function, `average` only (M=1)."""
    from adamix_deploy.collate import encode_classification, model_input_names
    from adamix_deploy.data import read_classification
    from adamix_deploy.evaluation import evaluate_classification

    scores = {}
    for name in sets:
        examples = read_classification(splits / f"{name}.tsv", labels=labels)
        items = encode_classification(tokenizer, examples, labels, MAX_LENGTH, model_input_names(model))
        result = evaluate_classification(model, items, tokenizer.pad_token_id, "average")
        scores[f"{name}_average"] = {k: result[k] for k in SCORES}
    return scores
