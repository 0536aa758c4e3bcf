"""AdaMix against the single module of the same serving cost, a consistency-only control and PEFT LoRA, on
SST-2 with MiniLM-L6 (issue 10). Not a test: prints tables, writes JSON lines + a JSON summary + PNG.

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
- Final: each arm at its chosen setting with FINAL_SEEDS; accuracy on the 5,000 test sentences and the
  official dev set with `average` routing (the merge: one module's cost) and, for AdaMix, `ensemble`.
  Report: mean with a 95 % t-interval per arm; per-seed paired differences (same split, same seed) with
  their mean, 95 % t-interval and the count of seeds won.

    python benchmarks/bench_adamix.py splits            # writes the split files (needs ../shared/data)
    python benchmarks/bench_adamix.py tune  [--workers 4] [--device cuda]
    python benchmarks/bench_adamix.py final [--workers 4] [--device cuda]
    python benchmarks/bench_adamix.py report

Every run appends one JSON line to `adamix_sst2_runs.jsonl` (in --results) as it finishes; a re-run skips
the runs already there, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT.parent.parent / "shared" / "data"
# derived from ../shared/data, so never committed (results/tmp is git-ignored); SPLIT_SEED recreates them
SPLITS = RESULTS / "tmp" / "sst2_splits"

SPLIT_SEED = 20261123
TRAIN_SIZE, VAL_SIZE, TEST_SIZE = 1000, 1000, 5000
# Sized for this 2-core CPU (no GPU lent): one tuning seed, a 2 x 2 grid. A MiniLM step (batch 32, length 64)
# takes about 0.4 s with one pass and 0.8 s with AdaMix's two.
TUNING_SEEDS = (100,)
FINAL_SEEDS = tuple(range(8))
LRS = (1e-3, 3e-3)
EPOCHS = (3, 8)
BATCH, MAX_LENGTH, WEIGHT_DECAY, WARMUP = 32, 64, 0.1, 0.06
RUNS_FILE = "adamix_sst2_runs.jsonl"


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


# -- one run -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    phase: str  # tune | final
    arm: str
    lr: float
    epochs: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.phase}|{self.arm}|{self.lr:g}|{self.epochs}|{self.seed}"


def run_one(run: Run, model: str, splits: str, device: str | None, threads: int) -> dict:
    """Train one arm at one setting and score it; executed in a worker process."""
    import torch

    from adamix_deploy.collate import encode_classification, model_input_names
    from adamix_deploy.data import read_classification
    from adamix_deploy.evaluation import evaluate_classification

    torch.set_num_threads(threads)
    arm = ARMS[run.arm]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if arm.method == "peft-lora":
            model_obj, tokenizer, labels = _train_peft(run, model, Path(splits), device)
        else:
            model_obj, tokenizer, labels = _train_ours(run, arm, model, Path(splits), device, Path(tmp))
        train_seconds = time.perf_counter() - started
        sets = ["val"] + (["test", "dev"] if run.phase == "final" else [])
        routings = ["average"] + (["ensemble"] if arm.experts > 1 and run.phase == "final" else [])
        scores = {}
        accepted = model_input_names(model_obj)
        for name in sets:
            examples = read_classification(Path(splits) / f"{name}.tsv", labels=labels)
            items = encode_classification(tokenizer, examples, labels, MAX_LENGTH, accepted)
            for routing in routings if name != "val" else ["average"]:
                result = evaluate_classification(model_obj, items, tokenizer.pad_token_id, routing, batch_size=256)
                scores[f"{name}_{routing}"] = {k: result[k] for k in ("accuracy", "f1_macro", "mcc", "examples")}
    return {**asdict(run), "key": run.key, "scores": scores, "train_seconds": round(train_seconds, 1),
            "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu"))}  # fmt: skip


def _train_ours(run: Run, arm: Arm, model: str, splits: Path, device: str | None, tmp: Path):
    from adamix_deploy.checkpoint import load_checkpoint
    from adamix_deploy.config import MixtureSpec, TrainOptions
    from adamix_deploy.train import train

    spec = MixtureSpec(arm.method, experts=arm.experts, share="up", rank=8, alpha=16.0, bottleneck=16,
                       init="official")  # fmt: skip
    options = TrainOptions(
        model=model, task="classification", train_file=str(splits / "train.tsv"), output=str(tmp / "run"),
        mixture=spec, consistency_weight=arm.consistency, epochs=run.epochs, batch_size=BATCH, lr=run.lr,
        weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, max_length=MAX_LENGTH, seed=run.seed,
        train_pooler=True, progress=False, device=device,
    )  # fmt: skip
    train(options)
    ckpt = load_checkpoint(tmp / "run")
    import torch

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return ckpt.model.to(target), ckpt.tokenizer, ckpt.config["labels"]


def _train_peft(run: Run, model: str, splits: Path, device: str | None):
    """PEFT's LoRA through the same data, schedule, optimizer and clipping as our single-pass arms."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from adamix_deploy.collate import collate, encode_classification, model_input_names
    from adamix_deploy.data import label_set, read_classification
    from adamix_deploy.packaged_models import resolve_model

    torch.manual_seed(run.seed)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = read_classification(splits / "train.tsv")
    labels = label_set(examples)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                        target_modules=["query", "value"], modules_to_save=["classifier", "pooler"])  # fmt: skip
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peft_model = get_peft_model(base, config).to(target)
    items = encode_classification(tokenizer, examples, labels, MAX_LENGTH, model_input_names(base))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(items) / BATCH)
    total = steps_per_epoch * run.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP * total), total)
    for epoch in range(run.epochs):
        peft_model.train()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(run.seed + epoch))
        for index in range(steps_per_epoch):
            chunk = order[index * BATCH : (index + 1) * BATCH]
            batch = collate([items[i] for i in chunk], tokenizer.pad_token_id, target)
            loss = torch.nn.functional.cross_entropy(
                peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(), batch["labels"]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
    return peft_model.eval(), tokenizer, labels


# -- the plan ----------------------------------------------------------------------------------------------------
def read_runs(results: Path) -> list[dict]:
    file = results / RUNS_FILE
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def tuning_plan(done: dict) -> list[Run]:
    """Free arms first (their chosen epochs fix the budget-bound arms' epochs)."""
    plan = []
    for name, arm in ARMS.items():
        if arm.budget_of is not None:
            base = chosen(done, arm.budget_of)
            if base is None:
                continue  # its single module is not tuned yet: a later `tune` adds these
            grid = [(lr, base[1] * arm.budget) for lr in LRS]
        else:
            grid = [(lr, epochs) for epochs in EPOCHS for lr in LRS]
        plan += [Run("tune", name, lr, epochs, seed) for lr, epochs in grid for seed in TUNING_SEEDS]
    return plan


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


def final_plan(done: dict) -> list[Run]:
    """Seed by seed across the arms, so that an interrupted run leaves complete pairs to compare."""
    settings = {name: chosen(done, name) for name in ARMS}
    return [
        Run("final", name, setting[0], setting[1], seed)
        for seed in FINAL_SEEDS
        for name, setting in settings.items()
        if setting is not None
    ]


def execute(plan: list[Run], args) -> None:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_runs(results)}
    todo = [r for r in plan if r.key not in done]
    if args.limit:
        todo = todo[: args.limit]
    print(f"{len(todo)} runs to do ({len(plan) - len(todo)} of this plan already done)", flush=True)
    model = args.model
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, r, model, str(args.splits), args.device, args.threads): r for r in todo}
        for future in as_completed(futures):
            run = futures[future]
            try:
                row = future.result()
            except Exception as e:  # one failed run is reported, the others go on
                print(f"FAILED {run.key}: {type(e).__name__}: {e}", flush=True)
                continue
            with (results / RUNS_FILE).open("a") as f:
                f.write(json.dumps(row) + "\n")
            val = row["scores"]["val_average"]["accuracy"]
            print(f"{run.key}: val {val:.4f} ({row['train_seconds']} s)", flush=True)


# -- report ------------------------------------------------------------------------------------------------------
def t_interval(values: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = stats.t.ppf(0.975, n - 1) * sd / n**0.5
    return mean, mean - half, mean + half


def report(args) -> None:
    results = Path(args.results)
    done = {r["key"]: r for r in read_runs(results)}
    summary = {"protocol": {k: globals()[k] for k in ("SPLIT_SEED", "TRAIN_SIZE", "VAL_SIZE", "TEST_SIZE",
               "TUNING_SEEDS", "FINAL_SEEDS", "LRS", "EPOCHS", "BATCH", "MAX_LENGTH", "WEIGHT_DECAY", "WARMUP")},
               "splits": json.loads((Path(args.splits) / "info.json").read_text()) if (Path(args.splits) / "info.json").exists() else None,
               "arms": {}, "comparisons": []}  # fmt: skip
    print(
        "| arm | lr | epochs | val (tuning) | seeds | test 5,000 (95 % CI) | dev 872 (95 % CI) | ensemble test | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    finals: dict[str, dict[int, dict]] = {}
    for name in ARMS:
        setting = chosen(done, name)
        rows = [r for r in done.values() if r["phase"] == "final" and r["arm"] == name]
        finals[name] = {r["seed"]: r for r in rows}
        tuning = [r["scores"]["val_average"]["accuracy"] for r in done.values()
                  if r["phase"] == "tune" and r["arm"] == name and setting and (r["lr"], r["epochs"]) == setting]  # fmt: skip
        entry = {
            "chosen": setting,
            "tuning_val": sum(tuning) / len(tuning) if tuning else None,
            "seeds": len(rows),
        }
        if rows:
            for split in ("test", "dev"):
                entry[split] = t_interval([100 * r["scores"][f"{split}_average"]["accuracy"] for r in rows])
            if "test_ensemble" in rows[0]["scores"]:
                entry["test_ensemble"] = t_interval([100 * r["scores"]["test_ensemble"]["accuracy"] for r in rows])
            entry["train_seconds_median"] = sorted(r["train_seconds"] for r in rows)[len(rows) // 2]
        summary["arms"][name] = entry

        def cell(key, entry=entry):
            if key not in entry:
                return "-"
            mean, lo, hi = entry[key]
            return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"

        print(f"| {name} | {setting[0] if setting else '-'} | {setting[1] if setting else '-'} | "
              f"{100 * entry['tuning_val']:.2f} | {len(rows)} | {cell('test')} | {cell('dev')} | {cell('test_ensemble')} | "
              f"{entry.get('train_seconds_median', '-')} |" if entry["tuning_val"] is not None else f"| {name} | not tuned yet |")  # fmt: skip
    print(
        "\n| AdaMix arm vs | paired seeds | mean test difference (95 % CI) | seeds won | dev difference (95 % CI) |"
    )
    print("|---|---|---|---|---|")
    for arm, other in COMPARISONS:
        seeds = sorted(set(finals[arm]) & set(finals[other]))
        if len(seeds) < 2:
            continue
        diff = {split: [100 * (finals[arm][s]["scores"][f"{split}_average"]["accuracy"]
                               - finals[other][s]["scores"][f"{split}_average"]["accuracy"]) for s in seeds]
                for split in ("test", "dev")}  # fmt: skip
        test = t_interval(diff["test"])
        dev = t_interval(diff["dev"])
        wins = sum(d > 0 for d in diff["test"])
        summary["comparisons"].append({"arm": arm, "against": other, "seeds": seeds, "test_differences": diff["test"],
                                       "test": test, "dev": dev, "wins": wins})  # fmt: skip
        print(f"| {arm} vs {other} | {len(seeds)} | {test[0]:+.2f} [{test[1]:+.2f}, {test[2]:+.2f}] | "
              f"{wins}/{len(seeds)} | {dev[0]:+.2f} [{dev[1]:+.2f}, {dev[2]:+.2f}] |")  # fmt: skip
    (results / "adamix_sst2.json").write_text(json.dumps(summary, indent=1))
    _plot(summary, results / "adamix_sst2.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, e in summary["arms"].items() if "test" in e]
    comparisons = summary["comparisons"]
    if not arms:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    means = [summary["arms"][a]["test"][0] for a in arms]
    errors = [[m - summary["arms"][a]["test"][1] for a, m in zip(arms, means, strict=True)],
              [summary["arms"][a]["test"][2] - m for a, m in zip(arms, means, strict=True)]]  # fmt: skip
    left.errorbar(range(len(arms)), means, yerr=errors, fmt="o", capsize=4)
    left.set_xticks(range(len(arms)), arms, rotation=35, ha="right")
    left.set_ylabel("SST-2 test accuracy, 5,000 sentences (%)")
    left.set_title("mean over seeds, 95 % t-interval")
    for i, c in enumerate(comparisons):
        right.scatter([i] * len(c["test_differences"]), c["test_differences"], s=14, alpha=0.7)
        right.errorbar([i], [c["test"][0]], yerr=[[c["test"][0] - c["test"][1]], [c["test"][2] - c["test"][0]]],
                       fmt="_", color="black", capsize=6)  # fmt: skip
    right.axhline(0, color="grey", lw=0.8)
    right.set_xticks(range(len(comparisons)), [f"{c['arm']}\nvs {c['against']}" for c in comparisons],
                     rotation=60, ha="right", fontsize=7)  # fmt: skip
    right.set_ylabel("paired test difference per seed (points)")
    right.set_title("AdaMix minus the other arm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["splits", "tune", "final", "report"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--splits", default=str(SPLITS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--model", default="minilm", help="packaged name or folder")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (separate processes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--limit", type=int, default=0, help="at most this many runs now (0: all)")
    args = parser.parse_args()
    if args.phase == "splits":
        if not Path(args.data).is_dir():
            sys.exit(f"skipped: {args.data} not found (the real data sets live in ../shared/data)")
        print(json.dumps(make_splits(Path(args.data), Path(args.splits)), indent=1))
    elif args.phase == "report":
        report(args)
    else:
        if not (Path(args.splits) / "train.tsv").exists():
            sys.exit(f"no splits in {args.splits}: run `splits` first")
        # tuning runs in two rounds: the budget-bound AdaMix arms need their single module's chosen epochs
        for _ in range(2 if args.phase == "tune" else 1):
            done = {r["key"]: r for r in read_runs(Path(args.results))}
            execute(tuning_plan(done) if args.phase == "tune" else final_plan(done), args)


if __name__ == "__main__":
    main()
