"""AdaMix vs single modules on real data (issue 2's benchmark). Not a test: prints tables, writes JSON + PNG.

Classification (MiniLM-L6, ../shared/data/glue SST-2 and RTE, fixed seeded training subsets, 3 seeds):
AdaMix-adapter (M=4), single adapter (M=1), AdaMix-LoRA (M=4), single LoRA (M=1), head only. AdaMix is
evaluated with `average` routing (the merge: same inference cost as the single module) and also with
`ensemble` and `random`. Generation (SmolLM2-135M, E2E): AdaMix-LoRA vs single LoRA, BLEU / ROUGE-L.

    python benchmarks/bench_train.py glue   [--seeds 3] [--sst2-train 1000] [--rte-train 600]
    python benchmarks/bench_train.py e2e    [--train 480] [--test-mrs 100]
    python benchmarks/bench_train.py report

Runs are appended to benchmarks/results/train_*.json as they finish, and skipped when already there, so
an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adamix_deploy.checkpoint import load_checkpoint  # noqa: E402
from adamix_deploy.collate import encode_classification  # noqa: E402
from adamix_deploy.config import (
    MixtureSpec,  # noqa: E402
    TrainOptions,  # noqa: E402
)
from adamix_deploy.data import read_classification  # noqa: E402
from adamix_deploy.evaluation import evaluate_classification  # noqa: E402
from adamix_deploy.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT.parent.parent / "shared" / "data"

# Learning rates from a probe on SST-2 (1,000 examples, 3 epochs, single module): adapter 1e-3 reached 57%,
# 3e-3 79.6%, 1e-2 78.1%; LoRA 3e-3 79.2%; head only 2e-2 59.3% (its frozen CLS carries little).
CONFIGS = {  # name: (method, experts, consistency weight, lr)
    "adamix-adapter": ("adapter", 4, 1.0, 3e-3),
    "adapter": ("adapter", 1, 0.0, 3e-3),
    "adamix-lora": ("lora", 4, 1.0, 3e-3),
    "lora": ("lora", 1, 0.0, 3e-3),
    "head-only": ("head", 1, 0.0, 2e-2),
}
TASKS = {  # name: (train, dev, max_length)
    "sst2": ("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", 64),
    "rte": ("glue/RTE/train.tsv", "glue/RTE/dev.tsv", 128),
}


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_results(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)


def require_data() -> None:
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} not found (the real data sets live in ../shared/data beside the repository)")


def run_glue(args) -> None:
    require_data()
    out = RESULTS / "train_glue.json"
    rows = load_results(out)
    done = {(r["task"], r["config"], r["seed"]) for r in rows}
    sizes = {"sst2": args.sst2_train, "rte": args.rte_train}
    for task, (train_file, dev_file, max_length) in TASKS.items():
        for seed in range(args.seeds):
            for name, (method, experts, weight, lr) in CONFIGS.items():
                if (task, name, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    options = TrainOptions(
                        model="minilm",
                        task="classification",
                        train_file=str(DATA / train_file),
                        eval_file=str(DATA / dev_file),
                        output=f"{tmp}/ckpt",
                        mixture=MixtureSpec(
                            method=method, experts=experts, share="up", rank=8, alpha=16, bottleneck=16
                        ),
                        consistency_weight=weight,
                        epochs=args.epochs,
                        batch_size=32,
                        lr=lr,
                        max_length=max_length,
                        seed=seed,
                        max_train_examples=sizes[task],
                        progress=False,
                    )
                    started = time.perf_counter()
                    summary = train(options)
                    wall = time.perf_counter() - started
                    row = {
                        "task": task,
                        "config": name,
                        "seed": seed,
                        "method": method,
                        "experts": experts,
                        "train_examples": sizes[task],
                        "eval_examples": summary["eval"]["examples"],
                        "epochs": args.epochs,
                        "average": summary["eval"]["accuracy"],
                        "trainable_share": summary["trainable_share"],
                        "trainable_parameters": summary["trainable_parameters"],
                        "train_seconds": summary["train_seconds"],
                        "wall_seconds": round(wall, 1),
                    }
                    if experts > 1:  # the merge ablation: what averaging costs against other routings
                        ckpt = load_checkpoint(f"{tmp}/ckpt")
                        dev = read_classification(DATA / dev_file, labels=ckpt.config["labels"])
                        items = encode_classification(ckpt.tokenizer, dev, ckpt.config["labels"], max_length)
                        for routing in ("ensemble", "random"):
                            import torch

                            torch.manual_seed(1000 + seed)
                            metrics = evaluate_classification(
                                ckpt.model, items, ckpt.tokenizer.pad_token_id, routing
                            )
                            row[routing] = metrics["accuracy"]
                rows.append(row)
                save_results(out, rows)
                print(json.dumps(row), flush=True)
    report()


def run_e2e(args) -> None:
    require_data()
    out = RESULTS / "train_e2e.json"
    rows = load_results(out)
    done = {r["config"] for r in rows}
    for name, experts, weight in (("adamix-lora", 4, 1.0), ("lora", 1, 0.0)):
        if name in done:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            options = TrainOptions(
                model="smollm2",
                task="generation",
                train_file=str(DATA / "e2e/devset.csv"),
                eval_file=str(DATA / "e2e/testset_w_refs.csv"),
                output=f"{tmp}/ckpt",
                mixture=MixtureSpec(method="lora", experts=experts, share="up", rank=8, alpha=16),
                consistency_weight=weight,
                epochs=1,
                batch_size=8,
                lr=1e-3,
                max_length=96,
                seed=0,
                max_train_examples=args.train,
                max_eval_examples=500,
                generate_eval=args.test_mrs,
                max_new_tokens=48,
                progress=True,
            )
            started = time.perf_counter()
            summary = train(options)
            config = json.loads(Path(f"{tmp}/ckpt/adamix_config.json").read_text())
            row = {
                "config": name,
                "experts": experts,
                "seed": 0,
                "train_examples": args.train,
                "test_mrs": args.test_mrs,
                **summary["generation"],
                "eval_loss": summary["eval"]["loss"],
                "trainable_share": summary["trainable_share"],
                "train_seconds": summary["train_seconds"],
                "wall_seconds": round(time.perf_counter() - started, 1),
                "samples": config["training"]["generation"]["samples"],
            }
        rows.append(row)
        save_results(out, rows)
        print(json.dumps(row), flush=True)
    report()


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def report() -> None:
    glue = load_results(RESULTS / "train_glue.json")
    if glue:
        print("\n| task | config | seeds | accuracy (average) | ensemble | random | trainable share | train s |")
        print("|---|---|---|---|---|---|---|---|")
        for task in TASKS:
            for name in CONFIGS:
                rs = [r for r in glue if r["task"] == task and r["config"] == name]
                if not rs:
                    continue
                print(
                    f"| {task} ({rs[0]['train_examples']} train / {rs[0]['eval_examples']} dev) | {name} | {len(rs)} | "
                    f"{_mean_std([r['average'] for r in rs])} | {_mean_std([r['ensemble'] for r in rs if 'ensemble' in r])} | "
                    f"{_mean_std([r['random'] for r in rs if 'random' in r])} | {100 * rs[0]['trainable_share']:.3f}% | "
                    f"{statistics.median(r['train_seconds'] for r in rs):.0f} |"
                )
        _plot(glue)
    e2e = load_results(RESULTS / "train_e2e.json")
    if e2e:
        print("\n| E2E config | train pairs | test MRs | BLEU | ROUGE-L | eval loss | trainable share | train s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in e2e:
            print(
                f"| {r['config']} | {r['train_examples']} | {r['test_mrs']} | {r['bleu']:.1f} | {r['rouge_l']:.1f} | "
                f"{r['eval_loss']:.3f} | {100 * r['trainable_share']:.2f}% | {r['train_seconds']:.0f} |"
            )


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for ax, task in zip(axes, TASKS, strict=True):
        names = [n for n in CONFIGS if any(r["task"] == task and r["config"] == n for r in rows)]
        values = [[100 * r["average"] for r in rows if r["task"] == task and r["config"] == n] for n in names]
        ax.bar(
            range(len(names)),
            [statistics.mean(v) for v in values],
            yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
            capsize=4,
            color="#4c72b0",
        )
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel("dev accuracy % (average routing)")
        ax.set_title(f"{task}: MiniLM-L6, mean ± std over seeds")
        low = min(min(v) for v in values)
        ax.set_ylim(max(0, low - 10), 100)
    fig.tight_layout()
    fig.savefig(RESULTS / "train_glue.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("glue")
    g.add_argument("--seeds", type=int, default=3)
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--sst2-train", type=int, default=1000)
    g.add_argument("--rte-train", type=int, default=600)
    e = sub.add_parser("e2e")
    e.add_argument("--train", type=int, default=320)
    e.add_argument("--test-mrs", type=int, default=60)
    sub.add_parser("report")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    {"glue": run_glue, "e2e": run_e2e, "report": lambda _: report()}[args.what](args)


if __name__ == "__main__":
    main()
