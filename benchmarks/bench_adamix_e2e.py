"""AdaMix-LoRA against the single LoRA of the same serving cost on E2E generation, SmolLM2-135M-Instruct (the
generation part of the fair AdaMix benchmark, issue 10's SST-2 protocol in `bench_adamix.py`). Not a test:
prints tables, writes JSON lines + a JSON summary + PNG.

The protocol, fixed before any run:
- Data (../shared/data/e2e; the E2E training split is not available here). Drawn once with SPLIT_SEED:
  validation = VAL_MRS meaning representations (MRs) of `devset.csv` with all their references; training =
  TRAIN_PAIRS (MR, reference) pairs drawn from the other devset MRs (disjoint from validation); test =
  TEST_MRS MRs of `testset_w_refs.csv` with all their references (the devset and testset MRs are disjoint).
  The same data for every arm and seed: seeds change initialisation, batch order, dropout and routing only.
- Both arms use the official NLG recipe (`RECIPES["nlg-lora"]`, microsoft/AdaMix `NLG/run_train_e2e.sh`,
  docs/official_adamix.md Q6-Q9), the same way `adamix-train --recipe nlg-lora` applies it: LoRA r 4 /
  alpha 32 on q_proj and v_proj, LoRA dropout 0.1, label smoothing 0.1, weight decay 0.01, linear schedule
  with 2 % warm-up, A copied into every expert (official init), batch 8, gradient clipping at 1.0 (as
  everywhere in this repo; the official NLG runs do not clip).
    lora            the single module: experts 1, no consistency loss (`run_train_e2e_lora_only.sh`)
    adamix-lora-2x  M = 8 A experts, one shared B, consistency weight 100 per target token, trained for
                    ADAMIX_EPOCH_MULTIPLIER (2) x the single LoRA's epochs (official: 4x, 20 vs 5)
- Learning rate: tuned per arm, alike. With more than one value in LRS each arm's rate is chosen on the
  validation set only (never on test), by that arm's mean validation token loss (no smoothing, the merged
  model) over TUNING_SEEDS (never reused in the final runs), ties to the smaller rate. The epochs are not
  tuned (AdaMix's are its multiplier of the single LoRA's). Changed on 2026-12-01 after one final pair
  (seed 0): the first version gave AdaMix the single LoRA's tuned rate, untuned for AdaMix, against the
  issue's "every arm tuned alike"; final runs at a rate the tuning did not choose stay in the runs file and
  are left out of the report.
- Final: each arm with SEEDS. Evaluation of the merged model (`average` routing: each side's experts averaged,
  one LoRA's inference cost): greedy decoding of the TEST_MRS test MRs (one prediction per MR, batched with
  left padding and the KV cache), corpus BLEU against all references of each MR (sacrebleu, multi-reference)
  and ROUGE-L F1 (rouge-score, best over the references, averaged over MRs); and the test loss (token
  cross-entropy of the references given the MR, no smoothing) on TEST_LOSS_PAIRS seeded pairs of those MRs.
  Report: mean with a 95 % t-interval per arm; per-seed paired differences (same data, same seed) with their
  mean, 95 % t-interval and the count of seeds won (lower loss wins).

What is scaled down from the official E2E settings, and why (a 2-core CPU shared with other benchmarks,
no GPU lent; the whole plan has to fit in about 2-3 CPU hours, spread over sessions):
- model: SmolLM2-135M-Instruct (the packaged model), not GPT-2 medium (355M);
- training data: TRAIN_PAIRS (512) devset pairs, not the 42k-pair E2E train split (not available here);
- epochs: LORA_EPOCHS (1) for LoRA and 2x that (2) for AdaMix, not 5 and 20: 64 / 128 steps of batch 8,
  not ~26k / ~105k. Two epochs for LoRA (four for AdaMix) would cost about 4 h, over the budget;
- AdaMix's budget: ADAMIX_EPOCH_MULTIPLIER = 2x the single LoRA's epochs, not the official 4x;
- learning rate: the official 2e-4 barely moves in 64 steps, so LRS = (5e-4, 2e-3) are checked on each arm
  with one tuning seed on the devset validation MRs (a 2-point check, not a search: the single LoRA chose the
  upper rate and AdaMix the lower, both at an edge of the grid); the checkpoint is the last one (no model
  selection);
- warm-up: the official ~2 % as a ratio (1 / 2 steps here), not a fixed 500 / 2000 steps;
- sequence length: MAX_LENGTH 128 tokens for template(MR) + reference + eos (1 of the 4,672 devset pairs is
  longer and is cut), not 512;
- decoding: greedy, at most MAX_NEW_TOKENS (64, the official eval_len) new tokens, not beam 10 with length
  penalty 0.8 and no-repeat-ngram 4; TEST_MRS (200) of the 630 test MRs; the test loss on TEST_LOSS_PAIRS
  (400) of their (MR, reference) pairs;
- seeds: 3 per arm (the official scripts run seed 110 once): paired differences of 3 seeds are weak
  evidence, and the report says so through its t-intervals.

Cost, measured with `timing --threads 1` (4 steps per arm after one warm-up step) on this CPU while other
jobs kept it busy (load average 3-5 on its 2 cores): a LoRA step (batch 8, padded to the batch's longest pair, about
88 tokens) 5.4 s, an AdaMix step (two passes with 8 A experts, and the per-token KL over the 49k vocabulary)
12.5 s; evaluation (200 MRs decoded + 400 loss pairs) at most about 3 min per run. With 2 torch threads on
the shared CPU the same steps took 22 s and 63 s (the threads wait on each other when the other benchmark
holds a core), hence `--threads 1` by default; on a quiet machine try 2. The plan: 4 tuning runs (LoRA 64
steps, AdaMix 128 steps, at each of the 2 rates) + 3 seeds x (LoRA 64 steps + AdaMix 128 steps) = 320 LoRA
steps (0.5 h) + 640 AdaMix steps (2.2 h) + 10 evaluations (0.5 h) + model loading: about 3.3 h in all
(`timing` prints this projection from the step times it measures, so it can be redone on another machine;
measured beside another 1-thread job on 2026-12-01: LoRA 11.4 s and AdaMix 22.6 s a step, evaluation 6.5-7.3
min, so about 5 h there).

    python benchmarks/bench_adamix_e2e.py timing [--steps 4] [--threads 1]   # step times + projected plan
    python benchmarks/bench_adamix_e2e.py run    [--limit N] [--device cpu|cuda] [--threads 1]
    python benchmarks/bench_adamix_e2e.py report
    python benchmarks/bench_adamix_e2e.py run --quick && python benchmarks/bench_adamix_e2e.py report --quick
        # tiny sizes (16 pairs, 8 test MRs, 1 epoch, 2 seeds; or ADAMIX_E2E_QUICK=1), results in results/tmp/

Every run appends one JSON line to `adamix_e2e_runs.jsonl` (in --results) as it finishes; a re-run skips the
runs already there, so the benchmark can be spread over several sessions (`--limit N` does N runs and stops).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_adamix import t_interval  # noqa: E402  (benchmarks/ is on the path when run as a script)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
QUICK_RESULTS = RESULTS / "tmp" / "adamix_e2e_quick"  # git-ignored
DATA = ROOT.parent.parent / "shared" / "data" / "e2e"
MODEL = "smollm2"
RECIPE = "nlg-lora"

SPLIT_SEED = 20261124
TRAIN_PAIRS = 512  # (MR, reference) pairs of devset.csv
VAL_MRS = 40  # devset MRs held out for the learning-rate check (with all their references)
VAL_LOSS_PAIRS = 200
TEST_MRS = 200  # testset_w_refs.csv MRs, decoded once each, scored against all their references
TEST_LOSS_PAIRS = 400
SEEDS = (0, 1, 2)
TUNING_SEEDS = (100,)
LRS = (5e-4, 2e-3)  # the 2-point learning-rate check (one value: no tuning phase)
LORA_EPOCHS = 1  # 64 steps at 512 pairs; AdaMix 2 epochs, 128 steps (sized in the docstring)
ADAMIX_EPOCH_MULTIPLIER = 2  # AdaMix's epochs = this x the single LoRA's (official E2E: 4)
BATCH = 8
MAX_LENGTH = 128  # tokens of template(MR) + reference + eos
MAX_NEW_TOKENS = 64  # the official eval_len
GENERATION_BATCH = 32
RUNS_FILE = "adamix_e2e_runs.jsonl"


@dataclass(frozen=True)
class Sizes:
    train_pairs: int = TRAIN_PAIRS
    val_mrs: int = VAL_MRS
    val_loss_pairs: int = VAL_LOSS_PAIRS
    test_mrs: int = TEST_MRS
    test_loss_pairs: int = TEST_LOSS_PAIRS
    seeds: tuple[int, ...] = SEEDS
    tuning_seeds: tuple[int, ...] = TUNING_SEEDS
    lrs: tuple[float, ...] = LRS
    lora_epochs: int = LORA_EPOCHS
    max_new_tokens: int = MAX_NEW_TOKENS


FULL = Sizes()
# --quick / ADAMIX_E2E_QUICK=1: the whole pipeline (tuning, final, report) in a few minutes, nothing to conclude
QUICK = Sizes(16, 4, 16, 8, 16, seeds=(0, 1), tuning_seeds=(100,), lrs=LRS, lora_epochs=1, max_new_tokens=32)


@dataclass(frozen=True)
class Arm:
    experts: int | None  # None: the recipe's (8)
    consistency: float | None  # None: the recipe's (100)
    epoch_multiplier: int = 1


ARMS = {
    "lora": Arm(experts=1, consistency=0.0),
    f"adamix-lora-{ADAMIX_EPOCH_MULTIPLIER}x": Arm(None, None, ADAMIX_EPOCH_MULTIPLIER),
}
SINGLE, ADAMIX = list(ARMS)
METRICS = {  # key in a run's test scores: (label, higher is better)
    "bleu": ("BLEU", True),
    "rouge_l": ("ROUGE-L", True),
    "loss": ("token loss", False),
}


# -- data ---------------------------------------------------------------------------------------------------------
def _grouped(path: Path) -> dict[str, list[str]]:
    """MR -> its references, in file order."""
    groups: dict[str, list[str]] = {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            mr, ref = row["mr"].strip(), row["ref"].strip()
            if mr:
                groups.setdefault(mr, []).append(ref)
    return groups


def _sample(items: list, size: int, rng: random.Random) -> list:
    """A seeded subset in the original order."""
    if size >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), size))]


def make_splits(sizes: Sizes, data: Path = DATA) -> dict:
    """Training pairs, validation and test MRs (with all references) and the loss pairs, from SPLIT_SEED."""
    dev, test = _grouped(data / "devset.csv"), _grouped(data / "testset_w_refs.csv")
    rng = random.Random(SPLIT_SEED)
    mrs = list(dev)
    held_out = set(rng.sample(mrs, sizes.val_mrs))
    val = [(mr, dev[mr]) for mr in mrs if mr in held_out]
    pool = [(mr, ref) for mr in mrs if mr not in held_out for ref in dev[mr]]
    train = _sample(pool, sizes.train_pairs, rng)
    test_mrs = _sample(list(test), sizes.test_mrs, rng)
    test_refs = [(mr, test[mr]) for mr in test_mrs]
    val_pairs = _sample([(mr, r) for mr, refs in val for r in refs], sizes.val_loss_pairs, rng)
    test_pairs = _sample([(mr, r) for mr, refs in test_refs for r in refs], sizes.test_loss_pairs, rng)
    info = {
        "split_seed": SPLIT_SEED,
        "train_pairs": len(train),
        "train_mrs": len({mr for mr, _ in train}),
        "val_mrs": len(val),
        "val_loss_pairs": len(val_pairs),
        "test_mrs": len(test_refs),
        "test_references": sum(len(refs) for _, refs in test_refs),
        "test_loss_pairs": len(test_pairs),
        "dev_test_mr_overlap": len(set(dev) & set(test)),
    }
    return {"train": train, "val": val, "val_pairs": val_pairs, "test": test_refs, "test_pairs": test_pairs,
            "info": info}  # fmt: skip


# -- one run ------------------------------------------------------------------------------------------------------
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


def train_options(arm: Arm, train_file: Path, output: Path, lr: float, epochs: int, seed: int, device, **extra):
    """TrainOptions of one arm: the recipe applied as `adamix-train --recipe nlg-lora` applies it (its value
    for every option not given, `config.train_options`), then the arm's experts and consistency weight."""
    from adamix_deploy.config import train_options as resolve

    arm_choices = {"experts": arm.experts, "consistency_weight": arm.consistency}
    return resolve(
        RECIPE, model=MODEL, task="generation", train_file=str(train_file), output=str(output), method="lora",
        epochs=epochs, batch_size=BATCH, lr=lr, max_length=MAX_LENGTH, seed=seed, progress=False, device=device,
        **{k: v for k, v in arm_choices.items() if v is not None}, **extra,
    )  # fmt: skip


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["mr", "ref"])
        writer.writerows(pairs)


def decode(model, tokenizer, mrs: list[str], template: str, max_new_tokens: int) -> list[str]:
    """Greedy, batched; the MRs sorted by length so that a batch pads little, answers in the input order."""
    from adamix_deploy.evaluation import generate_texts

    order = sorted(range(len(mrs)), key=lambda i: len(tokenizer(mrs[i], add_special_tokens=False).input_ids))
    texts = generate_texts(model, tokenizer, [mrs[i] for i in order], template, max_new_tokens, GENERATION_BATCH)
    out = [""] * len(mrs)
    for i, text in zip(order, texts, strict=True):
        out[i] = text
    return out


def evaluate(model, tokenizer, template: str, refs, pairs, max_new_tokens: int) -> dict:
    """Merged-model (average routing) BLEU / ROUGE-L over the MRs and token loss over the pairs."""
    from adamix_deploy.collate import encode_generation
    from adamix_deploy.data import GenerationExample
    from adamix_deploy.evaluation import evaluate_generation_loss, generation_scores
    from adamix_deploy.mixture import set_routing

    set_routing(model, "average")
    predictions = decode(model, tokenizer, [mr for mr, _ in refs], template, max_new_tokens)
    scores = generation_scores(predictions, [r for _, r in refs])
    items = encode_generation(tokenizer, [GenerationExample(mr, ref) for mr, ref in pairs], template, MAX_LENGTH)
    loss = evaluate_generation_loss(model, items, tokenizer.pad_token_id, "average", batch_size=16)
    return {**scores, "loss": loss["loss"], "loss_tokens": loss["tokens"], "predictions": predictions}


def run_one(run: Run, splits: dict, sizes: Sizes, device: str | None) -> dict:
    import torch

    from adamix_deploy.checkpoint import load_checkpoint
    from adamix_deploy.train import train

    arm = ARMS[run.arm]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.csv"  # derived data stays in a temporary folder
        write_pairs(train_file, splits["train"])
        options = train_options(arm, train_file, Path(tmp) / "run", run.lr, run.epochs, run.seed, device)
        started = time.perf_counter()
        summary = train(options)
        wall_train = time.perf_counter() - started
        ckpt = load_checkpoint(Path(tmp) / "run")
        history = ckpt.config["training"]["history"]
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = ckpt.model.to(target)
        started = time.perf_counter()
        name = "val" if run.phase == "tune" else "test"
        scores = evaluate(model, ckpt.tokenizer, ckpt.config["prompt_template"], splits[name],
                          splits[f"{name}_pairs"], sizes.max_new_tokens)  # fmt: skip
        eval_seconds = time.perf_counter() - started
    predictions = scores.pop("predictions")
    return {
        **asdict(run),
        "key": run.key,
        "experts": options.mixture.experts,
        "consistency_weight": options.consistency_weight,
        "steps": summary["steps"],
        "train_loss_per_epoch": [h["train_loss"] for h in history],
        "scores": {name: scores},
        "train_seconds": summary["train_seconds"],
        "seconds_per_step": round(summary["train_seconds"] / max(summary["steps"], 1), 2),
        "wall_train_seconds": round(wall_train, 1),
        "eval_seconds": round(eval_seconds, 1),
        "trainable_parameters": summary["trainable_parameters"],
        "device": str(target),
        "threads": torch.get_num_threads(),
        "samples": [
            {"mr": mr, "prediction": p} for (mr, _), p in zip(splits[name][:3], predictions[:3], strict=True)
        ],
        "predictions": predictions,
    }


# -- the plan -----------------------------------------------------------------------------------------------------
def read_runs(results: Path) -> list[dict]:
    file = results / RUNS_FILE
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def tuning_plan(sizes: Sizes) -> list[Run]:
    """Every arm at every rate of LRS, with its own epochs: the single LoRA's first (its runs came first)."""
    if len(sizes.lrs) < 2:
        return []
    return [
        Run("tune", name, lr, sizes.lora_epochs * arm.epoch_multiplier, s)
        for name, arm in ARMS.items()
        for lr in sizes.lrs
        for s in sizes.tuning_seeds
    ]


def chosen_lr(done: dict, sizes: Sizes, arm: str) -> float | None:
    """``arm``'s learning rate with the lowest mean validation loss; None until its tuning runs all ran."""
    if len(sizes.lrs) < 2:
        return sizes.lrs[0]
    epochs = sizes.lora_epochs * ARMS[arm].epoch_multiplier
    losses: dict[float, list[float]] = {}
    for row in done.values():
        if row["phase"] == "tune" and row["arm"] == arm and row["epochs"] == epochs:
            losses.setdefault(row["lr"], []).append(row["scores"]["val"]["loss"])
    complete = {lr: v for lr, v in losses.items() if lr in sizes.lrs and len(v) == len(sizes.tuning_seeds)}
    if len(complete) < len(sizes.lrs):
        return None
    return min(complete, key=lambda lr: (sum(complete[lr]) / len(complete[lr]), lr))


def final_plan(done: dict, sizes: Sizes) -> list[Run]:
    """Seed by seed across the arms, so that an interrupted benchmark leaves complete pairs to compare; each arm
    at its own chosen rate, once its tuning is complete."""
    lrs = {name: chosen_lr(done, sizes, name) for name in ARMS}
    return [
        Run("final", name, lrs[name], sizes.lora_epochs * arm.epoch_multiplier, seed)
        for seed in sizes.seeds
        for name, arm in ARMS.items()
        if lrs[name] is not None
    ]


def execute(args, sizes: Sizes) -> None:
    import torch

    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} not found (the real data sets live in ../shared/data beside the repository)")
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    splits = make_splits(sizes)
    print(json.dumps(splits["info"]), flush=True)
    left = args.limit or None
    for phase in ("tune", "final"):
        done = {r["key"]: r for r in read_runs(results)}
        plan = tuning_plan(sizes) if phase == "tune" else final_plan(done, sizes)
        todo = [r for r in plan if r.key not in done]
        if left is not None:
            todo = todo[:left]
        print(f"{phase}: {len(todo)} runs to do ({len(plan) - len(todo)} of this plan done or left for later)")
        for run in todo:
            row = run_one(run, splits, sizes, args.device)
            with (results / RUNS_FILE).open("a") as f:
                f.write(json.dumps(row) + "\n")
            s = row["scores"]["val" if run.phase == "tune" else "test"]
            print(f"{run.key}: BLEU {s['bleu']:.2f} ROUGE-L {s['rouge_l']:.2f} loss {s['loss']:.4f} "
                  f"({row['train_seconds']:.0f} s train, {row['seconds_per_step']} s/step, "
                  f"{row['eval_seconds']:.0f} s eval)", flush=True)  # fmt: skip
            if left is not None:
                left -= 1
        if left == 0:
            return
        done = {r["key"]: r for r in read_runs(results)}
        if phase == "tune" and any(chosen_lr(done, sizes, name) is None for name in ARMS):
            print("the learning-rate check is not complete: final runs wait for it")
            return


# -- timing -------------------------------------------------------------------------------------------------------
def timing(args, sizes: Sizes) -> None:
    """Seconds per training step of each arm (a few steps of the real setting) and of the evaluation, and the
    projected time of the whole plan from them."""
    import torch

    from adamix_deploy.checkpoint import read_config
    from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
    from adamix_deploy.packaged_models import resolve_model
    from adamix_deploy.train import train

    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} not found")
    torch.set_num_threads(args.threads)
    splits = make_splits(sizes)
    per_step = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.csv"
        write_pairs(train_file, splits["train"])
        for name, arm in ARMS.items():
            output = Path(tmp) / name
            # warm-up step excluded: one run of 1 step, one of 1 + N steps
            seconds = []
            for steps in (1, 1 + args.steps):
                options = train_options(arm, train_file, output, sizes.lrs[0], sizes.lora_epochs, 0, args.device,
                                        stop_after=steps)  # fmt: skip
                train(options, overwrite=True)
                seconds.append(read_config(output)["training"]["train_seconds"])
            per_step[name] = (seconds[1] - seconds[0]) / args.steps
            print(f"{name}: {per_step[name]:.2f} s per step (batch {BATCH}, {args.steps} steps)", flush=True)
        path = resolve_model(MODEL)
        tokenizer = load_tokenizer(path)
        model, _ = build_mixture_model(path, "generation", None, train_options(ARMS[ADAMIX], train_file, output, 1e-3,
                                       1, 0, None).mixture, tokenizer)  # fmt: skip
        model.to(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
        n = min(args.eval_mrs, len(splits["test"]))
        started = time.perf_counter()
        evaluate(model, tokenizer, "{prompt}\n", splits["test"][:n], splits["test_pairs"][: n * 2],
                 sizes.max_new_tokens)  # fmt: skip
        eval_seconds = (time.perf_counter() - started) * len(splits["test"]) / n
    print(f"evaluation of {len(splits['test'])} MRs + {len(splits['test_pairs'])} loss pairs: about "
          f"{eval_seconds:.0f} s per run (from {n} MRs with the untrained model: it rarely stops early, so an "
          "upper figure)")  # fmt: skip
    steps_per_epoch = -(-len(splits["train"]) // BATCH)
    plan = [(r.arm, r.epochs) for r in tuning_plan(sizes)] + [
        (name, sizes.lora_epochs * arm.epoch_multiplier) for _ in sizes.seeds for name, arm in ARMS.items()
    ]
    total_steps = {name: sum(e * steps_per_epoch for a, e in plan if a == name) for name in ARMS}
    train_s = sum(total_steps[name] * per_step[name] for name in ARMS)
    total = train_s + len(plan) * eval_seconds
    print(f"plan: {len(plan)} runs, steps {total_steps}; training {train_s / 3600:.2f} h + evaluation "
          f"{len(plan) * eval_seconds / 3600:.2f} h = {total / 3600:.2f} h (plus ~20 s model loading per run)")  # fmt: skip


# -- report -------------------------------------------------------------------------------------------------------
def report(args, sizes: Sizes) -> None:
    results = Path(args.results)
    done = {r["key"]: r for r in read_runs(results)}
    if not done:
        sys.exit(f"no runs in {results / RUNS_FILE} yet: nothing to report")
    lrs = {name: chosen_lr(done, sizes, name) for name in ARMS}
    summary = {
        "protocol": {**asdict(sizes), "split_seed": SPLIT_SEED, "batch": BATCH, "max_length": MAX_LENGTH,
                     "adamix_epoch_multiplier": ADAMIX_EPOCH_MULTIPLIER, "recipe": RECIPE, "model": MODEL},
        "splits": make_splits(sizes)["info"] if DATA.is_dir() else None,
        "tuning": [{"arm": r["arm"], "lr": r["lr"], "seed": r["seed"],
                    **{k: r["scores"]["val"][k] for k in ("bleu", "rouge_l", "loss")}}
                   for r in done.values() if r["phase"] == "tune"],
        "chosen_lr": lrs, "arms": {}, "comparisons": [],
    }  # fmt: skip
    if summary["tuning"]:
        print("| lr check (validation) | arm | seed | BLEU | ROUGE-L | loss |\n|---|---|---|---|---|---|")
        for t in summary["tuning"]:
            print(
                f"| {t['lr']:g} | {t['arm']} | {t['seed']} | {t['bleu']:.2f} | {t['rouge_l']:.2f} | {t['loss']:.4f} |"
            )
        print(
            "chosen lr: "
            + ", ".join(f"{name} {'pending' if lr is None else f'{lr:g}'}" for name, lr in lrs.items())
            + "\n"
        )
    finals: dict[str, dict[int, dict]] = {}
    print("| arm | epochs | seeds | BLEU (95 % CI) | ROUGE-L (95 % CI) | test loss (95 % CI) | s/step | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ARMS:
        lr = lrs[name]
        rows = [r for r in done.values() if r["phase"] == "final" and r["arm"] == name and r["lr"] == lr]
        finals[name] = {r["seed"]: r for r in rows}
        if not rows:
            print(f"| {name} | - | 0 | - | - | - | - | - |")
            continue
        entry = {"lr": lr, "epochs": rows[0]["epochs"], "experts": rows[0]["experts"], "seeds": sorted(finals[name]),
                 "train_seconds_median": sorted(r["train_seconds"] for r in rows)[len(rows) // 2],
                 "seconds_per_step_median": sorted(r["seconds_per_step"] for r in rows)[len(rows) // 2]}  # fmt: skip
        for metric in METRICS:
            values = [r["scores"]["test"][metric] for r in rows]
            entry[metric] = t_interval(values)
            entry[f"{metric}_per_seed"] = values
        summary["arms"][name] = entry

        def cell(metric, entry=entry, digits=2):
            mean, lo, hi = entry[metric]
            return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

        print(f"| {name} | {entry['epochs']} | {len(rows)} | {cell('bleu')} | {cell('rouge_l')} | "
              f"{cell('loss', digits=4)} | {entry['seconds_per_step_median']} | {entry['train_seconds_median']:.0f} |")  # fmt: skip
    seeds = sorted(set(finals[ADAMIX]) & set(finals[SINGLE]))
    if len(seeds) >= 2:
        print(f"\n| {ADAMIX} minus {SINGLE} | paired seeds | mean difference (95 % CI) | seeds won |")
        print("|---|---|---|---|")
        for metric, (label, higher) in METRICS.items():
            diffs = [finals[ADAMIX][s]["scores"]["test"][metric] - finals[SINGLE][s]["scores"]["test"][metric]
                     for s in seeds]  # fmt: skip
            mean, lo, hi = t_interval(diffs)
            wins = sum((d > 0) if higher else (d < 0) for d in diffs)
            summary["comparisons"].append({"arm": ADAMIX, "against": SINGLE, "metric": metric, "seeds": seeds,
                                           "differences": diffs, "mean_ci": (mean, lo, hi), "wins": wins})  # fmt: skip
            digits = 4 if metric == "loss" else 2
            print(f"| {label} | {len(seeds)} | {mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] | "
                  f"{wins}/{len(seeds)} |")  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    (results / "adamix_e2e.json").write_text(json.dumps(summary, indent=1))
    _plot(summary, results / "adamix_e2e.png")
    print(f"\nwrote {results / 'adamix_e2e.json'} and {results / 'adamix_e2e.png'}")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    if not arms:
        return
    fig, axes = plt.subplots(2, len(METRICS), figsize=(4.4 * len(METRICS), 7.5), squeeze=False)
    comparisons = {c["metric"]: c for c in summary["comparisons"]}
    for column, (metric, (label, higher)) in enumerate(METRICS.items()):
        top, bottom = axes[0][column], axes[1][column]
        for i, arm in enumerate(arms):
            entry = summary["arms"][arm]
            top.scatter([i] * len(entry[f"{metric}_per_seed"]), entry[f"{metric}_per_seed"], s=14, alpha=0.6)
            _interval(top, i, entry[metric])
        top.set_xticks(range(len(arms)), arms)
        top.set_title(f"test {label}, per seed and mean (95 % CI)", fontsize=9)
        if metric in comparisons:
            c = comparisons[metric]
            bottom.scatter([0] * len(c["differences"]), c["differences"], s=14, alpha=0.7)
            _interval(bottom, 0, c["mean_ci"])
            bottom.axhline(0, color="grey", lw=0.8)
            bottom.set_xticks([0], [f"{c['wins']}/{len(c['seeds'])} seeds won"])
        bottom.set_title(f"{ADAMIX} minus {SINGLE}: {label} ({'higher' if higher else 'lower'} is better)",
                         fontsize=9)  # fmt: skip
    p = summary["protocol"]
    fig.suptitle(f"E2E, SmolLM2-135M: {p['train_pairs']} train pairs, {p['test_mrs']} test MRs, merged model "
                 "(average routing), mean and 95 % t-interval over seeds", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _interval(ax, x: float, interval) -> None:
    mean, lo, hi = interval
    if lo == lo:  # not NaN (one seed has no interval)
        ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", color="black", capsize=6)
    else:
        ax.scatter([x], [mean], marker="_", color="black", s=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["run", "report", "timing"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results under results/tmp/")
    parser.add_argument("--results", default=None, help=f"default {RESULTS} ({QUICK_RESULTS} with --quick)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (docstring: 1 on a shared CPU)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many runs now (0: all)")
    parser.add_argument("--steps", type=int, default=4, help="timing: steps measured per arm")
    parser.add_argument("--eval-mrs", type=int, default=32, help="timing: MRs decoded to time the evaluation")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("ADAMIX_E2E_QUICK") == "1"
    sizes = QUICK if quick else FULL
    if args.results is None:
        args.results = str(QUICK_RESULTS if quick else RESULTS)
    {"run": execute, "report": report, "timing": timing}[args.phase](args, sizes)


if __name__ == "__main__":
    main()
