"""E2E generation with SmolLM2-135M-Instruct: AdaMix-LoRA against the single LoRA of the same serving cost, the
official NLG recipe scaled down to a 2-core CPU.

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
    lora            the single module: experts 1, no consistency loss (`run_train_e2e_lora_only.sh`), 1 epoch
    adamix-lora-2x  M = 8 A experts, one shared B, consistency weight 100 per target token, 2 epochs (the
                    first study: 2x the single LoRA's budget)
    adamix-lora-4x  the same mixture for 4 epochs: the official ratio (AdaMix 20 epochs against LoRA's 5)
    lora-4x         the single module for 4 epochs: the control for training length (added with the 4x
                    arm: is AdaMix at 4x level with a single LoRA trained as long?)
  The comparisons (COMPARISONS): adamix-lora-2x and adamix-lora-4x against lora (the paper's framing), and
  adamix-lora-4x against lora-4x (the same budget); lora-4x against lora (what the longer schedule alone gives;
  added to the report after the runs, it reads the same runs and feeds no choice).
- Learning rate: tuned per arm, alike. With more than one value in LRS each arm's rate is chosen on the
  validation set only (never on test), by that arm's mean validation token loss (no smoothing, the merged
  model) over TUNING_SEEDS (never reused in the final runs), ties to the smaller rate. The epochs are not
  tuned (AdaMix's are its multiplier of the single LoRA's). Changed after one final pair (seed 0): the first
  version gave AdaMix the single LoRA's tuned rate, untuned for AdaMix, against "every arm tuned alike"; final
  runs at a rate the tuning did not choose stay in the runs file and are left out of the report.
- Final: each arm with SEEDS. Evaluation of the merged model (`average` routing: each side's experts averaged,
  one LoRA's inference cost): greedy decoding of the TEST_MRS test MRs (one prediction per MR, batched with
  left padding and the KV cache), corpus BLEU against all references of each MR (sacrebleu, multi-reference)
  and ROUGE-L F1 (rouge-score, best over the references, averaged over MRs); and the test loss (token
  cross-entropy of the references given the MR, no smoothing) on TEST_LOSS_PAIRS seeded pairs of those MRs.
  Report: mean with a 95 % t-interval per arm; per-seed paired differences (same data, same seed) with their
  mean, 95 % t-interval and the count of seeds won (lower loss wins).
- Selection (the 4x pair, SELECTION_PAIR): the final runs train one epoch per call and are scored on validation
  and test after every epoch (`epochwise.py`; a resumed run equals an uninterrupted one), so the report can
  compare three ways of picking the checkpoint: the last one (the headline figures), the best epoch on the
  validation MRs, and the best epoch on the test MRs themselves (the paper's protocol: it picks on the set it
  reports), each metric chosen on itself.

What is scaled down from the official E2E settings, and why (a 2-core CPU shared with other benchmarks,
no GPU; the whole plan has to fit in about 2-3 CPU hours, spread over sessions):
- model: SmolLM2-135M-Instruct (the packaged model), not GPT-2 medium (355M);
- training data: TRAIN_PAIRS (512) devset pairs, not the 42k-pair E2E train split (not available here);
- epochs: LORA_EPOCHS (1) for LoRA, 2 and 4 for AdaMix and 4 for the length control, not 5 and 20: 64, 128
  and 256 steps of batch 8, not ~26k / ~105k;
- AdaMix's budget: 2x and 4x the single LoRA's epochs (the official ratio is 4x);
- learning rate: the official 2e-4 barely moves in 64 steps, so LRS = (5e-4, 2e-3) are checked on each arm
  with one tuning seed on the devset validation MRs (a 2-point check, not a search: the single LoRA chose the
  upper rate and AdaMix-2x the lower, both at an edge of the grid); the headline checkpoint is the last one;
- warm-up: the official ~2 % as a ratio (1 / 2 steps here), not a fixed 500 / 2000 steps;
- sequence length: MAX_LENGTH 128 tokens for template(MR) + reference + eos (1 of the 4,672 devset pairs is
  longer and is cut), not 512;
- decoding: greedy, at most MAX_NEW_TOKENS (64, the official eval_len) new tokens, not beam 10 with length
  penalty 0.8 and no-repeat-ngram 4; TEST_MRS (200) of the 630 test MRs; the test loss on TEST_LOSS_PAIRS
  (400) of their (MR, reference) pairs;
- seeds: 3 per arm (the official scripts run seed 110 once): paired differences of 3 seeds are weak
  evidence, and the report says so through its t-intervals.

Cost, measured with `timing --threads 1` (4 steps per arm after one warm-up step) on this CPU while other
jobs kept it busy (load average 3-5 on its 2 cores): a LoRA step (batch 8, padded to the batch's longest pair,
about 88 tokens) 5.4 s, an AdaMix step (two passes with 8 A experts, and the per-token KL over the 49k
vocabulary) 12.5 s; evaluation (200 MRs decoded + 400 loss pairs) at most about 3 min per run. With 2 torch
threads on the shared CPU the same steps took 22 s and 63 s (the threads wait on each other when the other
benchmark holds a core), hence `--threads 1` by default; on a quiet machine try 2. The plan: 4 tuning runs
(LoRA 64 steps, AdaMix 128 steps, at each of the 2 rates) + 3 seeds x (LoRA 64 steps + AdaMix 128 steps) = 320
LoRA steps (0.5 h) + 640 AdaMix steps (2.2 h) + 10 evaluations (0.5 h) + model loading: about 3.3 h in all
(`timing` prints this projection from the step times it measures, so it can be redone on another machine;
measured beside another 1-thread job: LoRA 11.4 s and AdaMix 22.6 s a step, evaluation 6.5-7.3 min, so about
5 h there).

``--quick`` (or ADAMIX_E2E_QUICK=1): tiny sizes (16 pairs, 8 test MRs, 1 epoch, 2 seeds), results under
results/tmp/adamix_e2e_quick/: the whole pipeline in a few minutes, nothing to conclude. Runs file
`adamix_e2e_runs.jsonl`, summary `adamix_e2e.json`, plot `adamix_e2e.png`.
"""

from __future__ import annotations

import csv
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.adamix_quality.epochwise import (
    selection_header,
    selection_rows,
    selection_study,
    train_scoring_epochs,
)
from benchmarks.common.pages import Markdown
from benchmarks.common.paths import DATA, WORK
from benchmarks.common.plots import interval_marker, paired_differences, pyplot, save
from benchmarks.common.stats import median_of, paired, t_interval
from benchmarks.common.trials import Protocol, Trial

E2E = DATA / "e2e"
QUICK_RESULTS = WORK / "adamix_e2e_quick"  # git-ignored
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
BATCH = 8
MAX_LENGTH = 128  # tokens of template(MR) + reference + eos
MAX_NEW_TOKENS = 64  # the official eval_len
GENERATION_BATCH = 32


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
QUICK = Sizes(16, 4, 16, 8, 16, seeds=(0, 1), tuning_seeds=(100,), lrs=LRS, lora_epochs=1, max_new_tokens=32)


@dataclass(frozen=True)
class Arm:
    experts: int | None  # None: the recipe's (8)
    consistency: float | None  # None: the recipe's (100)
    epoch_multiplier: int = 1


ARMS = {
    "lora": Arm(experts=1, consistency=0.0),  # 64 steps
    "adamix-lora-2x": Arm(None, None, 2),  # 128 steps
    "lora-4x": Arm(experts=1, consistency=0.0, epoch_multiplier=4),  # 256 steps: the control for length
    "adamix-lora-4x": Arm(None, None, 4),  # 256 steps: the official ratio to the single LoRA (20 vs 5 epochs)
}
COMPARISONS = [  # (arm, against): the paired differences the report shows
    ("adamix-lora-2x", "lora"),
    ("adamix-lora-4x", "lora"),  # the paper's comparison: AdaMix at 4x the single LoRA's budget
    ("adamix-lora-4x", "lora-4x"),  # ... and against a single LoRA trained as long
    ("lora-4x", "lora"),  # what the longer schedule alone gives the single LoRA
]
SELECTION_PAIR = ("adamix-lora-4x", "lora-4x")  # final runs scored after every epoch (epochwise.py)
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


def make_splits(sizes: Sizes, data: Path = E2E) -> dict:
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


# -- the plan -----------------------------------------------------------------------------------------------------
def tuning_plan(sizes: Sizes) -> list[Trial]:
    """Every arm at every rate of LRS, with its own epochs: the single LoRA's first (its runs came first)."""
    if len(sizes.lrs) < 2:
        return []
    return [
        Trial("tune", name, lr, sizes.lora_epochs * arm.epoch_multiplier, s)
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


def final_plan(done: dict, sizes: Sizes) -> list[Trial]:
    """Seed by seed across the arms, so that an interrupted benchmark leaves complete pairs to compare; each arm
    at its own chosen rate."""
    lrs = {name: chosen_lr(done, sizes, name) for name in ARMS}
    return [
        Trial("final", name, lrs[name], sizes.lora_epochs * arm.epoch_multiplier, seed)
        for seed in sizes.seeds
        for name, arm in ARMS.items()
    ]


class E2EGeneration(Protocol):
    runs_file = "adamix_e2e_runs.jsonl"
    summary_file, plot_file = "adamix_e2e.json", "adamix_e2e.png"
    default_splits, default_model, default_threads = None, MODEL, 1

    def __init__(self, quick: bool = False):
        self.quick = quick
        self.sizes = QUICK if quick else FULL

    def splits(self, options) -> dict:
        """Made from SPLIT_SEED at every run (nothing written): the sizes only."""
        return make_splits(self.sizes)["info"]

    def prepare(self, options) -> dict:
        if not E2E.is_dir():
            raise SystemExit(f"skipped: {E2E} not found (the real data sets live in ../shared/data)")
        splits = make_splits(self.sizes)
        print(splits["info"], flush=True)
        return splits

    def plan(self, done: dict, options) -> list[Trial]:
        """The learning-rate check first; the finals once every arm's rate is chosen."""
        tuning = tuning_plan(self.sizes)
        if any(t.key not in done for t in tuning) or any(chosen_lr(done, self.sizes, a) is None for a in ARMS):
            return tuning
        return final_plan(done, self.sizes)

    def run_one(self, trial: Trial, splits: dict, options) -> dict:
        """Train one run and score its last checkpoint (tuning: on validation; final: on test). The finals of
        SELECTION_PAIR are trained epoch by epoch and scored on validation and test after every epoch."""
        import torch

        from adamix_deploy.checkpoint import load_checkpoint
        from adamix_deploy.contracts.checkpoint_format import read_checkpoint_config
        from adamix_deploy.train import train

        torch.set_num_threads(options.threads)
        target = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        name = "val" if trial.phase == "tune" else "test"
        eval_seconds, last = 0.0, {}

        def score(ckpt, sets: tuple[str, ...]) -> dict:
            nonlocal eval_seconds
            started = time.perf_counter()
            out = {}
            for split in sets:
                scores = evaluate(ckpt.model.to(target), ckpt.tokenizer, ckpt.config.prompt_template,
                                  splits[split], splits[f"{split}_pairs"], self.sizes.max_new_tokens)  # fmt: skip
                last[split] = scores.pop("predictions")
                out[split] = scores
            eval_seconds += time.perf_counter() - started
            return out

        with tempfile.TemporaryDirectory() as tmp:
            train_file = Path(tmp) / "train.csv"  # derived data stays in a temporary folder
            write_pairs(train_file, splits["train"])
            options_ = train_options(ARMS[trial.arm], train_file, Path(tmp) / "run", trial.lr, trial.epochs,
                                     trial.seed, options.device)  # fmt: skip
            started = time.perf_counter()
            per_epoch = None
            if trial.phase == "final" and trial.arm in SELECTION_PAIR:
                steps_per_epoch = -(-len(splits["train"]) // BATCH)
                summary, per_epoch = train_scoring_epochs(
                    options_, steps_per_epoch, lambda c: score(c, ("val", "test"))
                )
                scores = per_epoch[-1]["test"]
            else:
                summary = train(options_)
                scores = score(load_checkpoint(Path(tmp) / "run"), (name,))[name]
            wall = time.perf_counter() - started
            history = read_checkpoint_config(Path(tmp) / "run").training["history"]
        predictions = last[name]
        return {
            **self.record(trial),
            "experts": options_.mixture.experts,
            "consistency_weight": options_.consistency_weight,
            "steps": summary["steps"],
            "train_loss_per_epoch": [h["train_loss"] for h in history],
            "scores": {name: scores},
            **({"per_epoch": per_epoch} if per_epoch else {}),
            "train_seconds": summary["train_seconds"],
            "seconds_per_step": round(summary["train_seconds"] / max(summary["steps"], 1), 2),
            "wall_train_seconds": round(wall - eval_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "trainable_parameters": summary["trainable_parameters"],
            "device": str(target),
            "threads": torch.get_num_threads(),
            "samples": [
                {"mr": mr, "prediction": p} for (mr, _), p in zip(splits[name][:3], predictions[:3], strict=True)
            ],
            "predictions": predictions,
        }

    def describe(self, row: dict) -> str:
        s = row["scores"]["val" if row["phase"] == "tune" else "test"]
        return (f"{row['key']}: BLEU {s['bleu']:.2f} ROUGE-L {s['rouge_l']:.2f} loss {s['loss']:.4f} "
                f"({row['train_seconds']:.0f} s train, {row['seconds_per_step']} s/step, "
                f"{row['eval_seconds']:.0f} s eval)")  # fmt: skip

    # -- timing ---------------------------------------------------------------------------------------------------
    def timing(self, options) -> None:
        """Seconds per training step of each arm (a few steps of the real setting) and of the evaluation, and the
        projected time of the whole plan from them."""
        import torch

        from adamix_deploy.checkpoint import read_config
        from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
        from adamix_deploy.packaged_models import resolve_model
        from adamix_deploy.train import train

        if not E2E.is_dir():
            raise SystemExit(f"skipped: {E2E} not found")
        sizes = self.sizes
        torch.set_num_threads(options.threads)
        splits = make_splits(sizes)
        per_step = {}
        with tempfile.TemporaryDirectory() as tmp:
            train_file = Path(tmp) / "train.csv"
            write_pairs(train_file, splits["train"])
            for name, arm in ARMS.items():
                output = Path(tmp) / name
                # warm-up step excluded: one run of 1 step, one of 1 + N steps
                seconds = []
                for steps in (1, 1 + options.steps):
                    resolved = train_options(arm, train_file, output, sizes.lrs[0], sizes.lora_epochs, 0,
                                             options.device, stop_after=steps)  # fmt: skip
                    train(resolved, overwrite=True)
                    seconds.append(read_config(output)["training"]["train_seconds"])
                per_step[name] = (seconds[1] - seconds[0]) / options.steps
                print(
                    f"{name}: {per_step[name]:.2f} s per step (batch {BATCH}, {options.steps} steps)", flush=True
                )
            path = resolve_model(MODEL)
            tokenizer = load_tokenizer(path)
            spec = train_options(ARMS["adamix-lora-4x"], train_file, output, 1e-3, 1, 0, None).mixture
            model, _ = build_mixture_model(path, "generation", None, spec, tokenizer)
            model.to(torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu")))
            n = min(options.eval_mrs, len(splits["test"]))
            started = time.perf_counter()
            evaluate(model, tokenizer, "{prompt}\n", splits["test"][:n], splits["test_pairs"][: n * 2],
                     sizes.max_new_tokens)  # fmt: skip
            eval_seconds = (time.perf_counter() - started) * len(splits["test"]) / n
        print(f"evaluation of {len(splits['test'])} MRs + {len(splits['test_pairs'])} loss pairs: about "
              f"{eval_seconds:.0f} s per run (from {n} MRs with the untrained model: it rarely stops early, so an "
              "upper figure)")  # fmt: skip
        steps_per_epoch = -(-len(splits["train"]) // BATCH)
        plan = [(t.arm, t.epochs) for t in tuning_plan(sizes)] + [
            (name, sizes.lora_epochs * arm.epoch_multiplier) for _ in sizes.seeds for name, arm in ARMS.items()
        ]
        total_steps = {name: sum(e * steps_per_epoch for a, e in plan if a == name) for name in ARMS}
        train_s = sum(total_steps[name] * per_step[name] for name in ARMS)
        total = train_s + len(plan) * eval_seconds
        print(f"plan: {len(plan)} runs, steps {total_steps}; training {train_s / 3600:.2f} h + evaluation "
              f"{len(plan) * eval_seconds / 3600:.2f} h = {total / 3600:.2f} h (plus ~20 s model loading per run)")  # fmt: skip

    # -- report ---------------------------------------------------------------------------------------------------
    def report(self, rows: list[dict], options, previous: dict) -> tuple[dict, Markdown]:
        sizes = self.sizes
        done = {r["key"]: r for r in rows}
        lrs = {name: chosen_lr(done, sizes, name) for name in ARMS}
        summary = {
            "protocol": {**asdict(sizes), "split_seed": SPLIT_SEED, "batch": BATCH, "max_length": MAX_LENGTH,
                         "arms": {n: asdict(a) for n, a in ARMS.items()}, "recipe": RECIPE, "model": MODEL},
            "splits": make_splits(sizes)["info"] if E2E.is_dir() else previous.get("splits"),
            "tuning": [{"arm": r["arm"], "lr": r["lr"], "seed": r["seed"],
                        **{k: r["scores"]["val"][k] for k in ("bleu", "rouge_l", "loss")}}
                       for r in done.values() if r["phase"] == "tune"],
            "chosen_lr": lrs, "arms": {}, "comparisons": [],
        }  # fmt: skip
        out = Markdown()
        if summary["tuning"]:
            out.table(["lr check (validation)", "arm", "seed", "BLEU", "ROUGE-L", "loss"],
                      [[f"{t['lr']:g}", t["arm"], t["seed"], f"{t['bleu']:.2f}", f"{t['rouge_l']:.2f}",
                        f"{t['loss']:.4f}"] for t in summary["tuning"]])  # fmt: skip
            chosen = ", ".join(f"{name} {'pending' if lr is None else f'{lr:g}'}" for name, lr in lrs.items())
            out(f"\nchosen learning rate: {chosen}\n")
        finals: dict[str, dict[int, dict]] = {}
        table = []
        for name in ARMS:
            lr = lrs[name]
            runs = [r for r in done.values() if r["phase"] == "final" and r["arm"] == name and r["lr"] == lr]
            finals[name] = {r["seed"]: r for r in runs}
            if not runs:
                table.append([name, "-", "-", "-", 0, "-", "-", "-", "-", "-"])
                continue
            entry = {"lr": lr, "epochs": runs[0]["epochs"], "experts": runs[0]["experts"], "seeds": sorted(finals[name]),
                     "train_seconds_median": median_of([r["train_seconds"] for r in runs]),
                     "seconds_per_step_median": median_of([r["seconds_per_step"] for r in runs])}  # fmt: skip
            for metric in METRICS:
                values = [r["scores"]["test"][metric] for r in runs]
                entry[metric] = t_interval(values)
                entry[f"{metric}_per_seed"] = values
            summary["arms"][name] = entry
            table.append([name, f"{lr:g}", entry["epochs"], runs[0]["steps"], len(runs), _cell(entry["bleu"]),
                          _cell(entry["rouge_l"]), _cell(entry["loss"], 4), entry["seconds_per_step_median"],
                          f"{entry['train_seconds_median']:.0f}"])  # fmt: skip
        out.table(["arm", "lr", "epochs", "steps", "seeds", "BLEU (95 % CI)", "ROUGE-L (95 % CI)",
                   "test loss (95 % CI)", "s/step (median)", "train s (median)"], table)  # fmt: skip
        for arm, other in COMPARISONS:
            seeds = sorted(set(finals[arm]) & set(finals[other]))
            if len(seeds) < 2:
                continue
            table = []
            for metric, (label, higher) in METRICS.items():
                diffs = [finals[arm][s]["scores"]["test"][metric] - finals[other][s]["scores"]["test"][metric]
                         for s in seeds]  # fmt: skip
                result = paired(diffs, higher)
                summary["comparisons"].append({"arm": arm, "against": other, "metric": metric, "seeds": seeds,
                                               "differences": diffs, "mean_ci": result["interval"],
                                               "wins": result["wins"]})  # fmt: skip
                digits = 4 if metric == "loss" else 2
                table.append([label, len(seeds), ", ".join(f"{d:+.{digits}f}" for d in diffs),
                              _cell(result["interval"], digits, "+"), f"{result['wins']}/{len(seeds)}"])  # fmt: skip
            out()
            out.table([f"{arm} minus {other}", "paired seeds", f"per seed ({', '.join(map(str, seeds))})",
                       "mean difference (95 % CI)", "seeds won"], table)  # fmt: skip
        self._report_selection(finals, summary, out)
        return summary, out

    def _report_selection(self, finals: dict, summary: dict, out: Markdown) -> None:
        """SELECTION_PAIR picked three ways (last, best epoch on validation, best epoch on test), per metric."""
        arm, other = SELECTION_PAIR
        runs = {name: {seed: r["per_epoch"] for seed, r in finals[name].items() if "per_epoch" in r}
                for name in SELECTION_PAIR}  # fmt: skip
        summary["selection"] = []
        if len(set(runs[arm]) & set(runs[other])) < 2:
            return
        for metric, (label, higher) in METRICS.items():
            study = selection_study(runs, arm, other, "test", metric, higher)
            summary["selection"].append({"arm": arm, "against": other, "label": label, **study})
            out()
            out.table(
                selection_header(study, arm, other, label),
                selection_rows(study, arm, other, 4 if metric == "loss" else 2),
            )

    def plot(self, summary: dict, path: Path) -> None:
        arms = list(summary["arms"])
        if not arms:
            return
        plt = pyplot()
        fig, axes = plt.subplots(2, len(METRICS), figsize=(4.4 * len(METRICS), 7.5), squeeze=False)
        for column, (metric, (label, higher)) in enumerate(METRICS.items()):
            top, bottom = axes[0][column], axes[1][column]
            for i, arm in enumerate(arms):
                entry = summary["arms"][arm]
                top.scatter([i] * len(entry[f"{metric}_per_seed"]), entry[f"{metric}_per_seed"], s=14, alpha=0.6)
                interval_marker(top, i, entry[metric])
            top.set_xticks(range(len(arms)), arms, fontsize=7)
            top.set_title(f"test {label}, per seed and mean (95 % CI)", fontsize=9)
            shown = [c for c in summary["comparisons"] if c["metric"] == metric]
            for i, c in enumerate(shown):
                paired_differences(bottom, i, c["differences"], c["mean_ci"])
            bottom.axhline(0, color="grey", lw=0.8)
            bottom.set_xticks(range(len(shown)), [f"{c['arm']}\nminus {c['against']}\n{c['wins']}/{len(c['seeds'])} "
                                                  "seeds won" for c in shown], fontsize=6)  # fmt: skip
            bottom.set_title(
                f"paired differences: {label} ({'higher' if higher else 'lower'} is better)", fontsize=9
            )
        p = summary["protocol"]
        fig.suptitle(f"E2E, SmolLM2-135M: {p['train_pairs']} train pairs, {p['test_mrs']} test MRs, merged model "
                     "(average routing), mean and 95 % t-interval over seeds", fontsize=9)  # fmt: skip
        save(fig, path, 120)


def _cell(interval, digits: int = 2, sign: str = "") -> str:
    mean, lo, hi = interval
    return f"{mean:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
