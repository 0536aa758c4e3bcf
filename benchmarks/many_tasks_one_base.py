"""What do many tasks cost on one base graph? onnxruntime LoRA adapters on a shared base against the same tasks
as separate folded exports. Not a test: prints tables, writes JSON + PNG.

    python -m benchmarks.many_tasks_one_base build    # task checkpoints, folded exports, adapter bases (resumable)
    python -m benchmarks.many_tasks_one_base graph    # the graph's own cost: base + adapter vs folded, in-process
    python -m benchmarks.many_tasks_one_base serve    # servers: memory, time to ready, latency, throughput
    python -m benchmarks.many_tasks_one_base report   # tables (and docs/benchmarks/adapters.md), plot

    python -m benchmarks.many_tasks_one_base build --only gen          # SmolLM2 only
    python -m benchmarks.many_tasks_one_base serve --only gen --quick  # SmolLM2, 8 tokens: prints, saves nothing

The tasks are seeded variants of one trained checkpoint each (`benchmarks.merged_exports build`'s MiniLM-L6
SST-2 AdaMix-LoRA, `results/tmp/cls-lora`, and its SmolLM2 AdaMix-LoRA, `results/tmp/gen-lora`): every LoRA and
head tensor gets seeded Gaussian noise (10 % of its own standard deviation), so each task has tensors of its own
with the real shapes. What is measured is cost (memory, time, latency), which depends on shapes only, not quality.

- graph: batch 1 and 8, padded to 128 tokens, 2 threads, one process per (graph, batch), ROUNDS rounds in
  alternation, median of the per-process medians. The multi-adapter graph with one adapter active
  (`RunOptions.add_active_adapter`) against the folded export of the same task.
- serve: each configuration is one `adamix-serve` process, one after the other, 2 threads; MiniLM with 1, 4
  and 16 tasks (adapters on one base, or that many folded folders), SmolLM2 with 1 and 4. Ready = process start
  to /ready answering; RSS after ready and its peak (VmHWM) after the load. The common load generator with 4
  warm-up requests: MiniLM, p50 of 200 sequential 1-sentence requests and of 60 sequential 8-sentence requests
  to the first task, then 800 1-sentence requests spread round-robin over every task at concurrency 8
  (throughput). SmolLM2: 4 prompts of 32 greedy tokens one at a time to the first task, then 8 spread over
  every task sent together, then 8 to the first task sent together (tokens/s over the wall time). The SmolLM2
  base has a multi-adapter graph, so its adapters share one decode batch; with 4 tasks it is also served as a
  base without one ("adapters, one engine each": the manifest's multi-adapter fields removed, as in a base
  written before them), where each adapter has its own engine and a call runs one adapter.
Results: results/adapters.json, adapters.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common.load import E2E_PROMPTS, load, sentences
from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS
from benchmarks.common.plots import pyplot, save
from benchmarks.common.servers import adamix_server
from benchmarks.common.subprocesses import child, command
from benchmarks.merged_exports import checkpoint_folder, export_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORK = RESULTS / "tmp" / "adapters"
SOURCES = {"cls": checkpoint_folder("cls-lora"), "gen": checkpoint_folder("gen-lora")}
BOTTLENECK_SOURCE = checkpoint_folder("cls-adapter")  # merged_exports' AdaMix-adapter (bottleneck 16)
TASKS = {"cls": 16, "gen": 4}
SERVE_COUNTS = {"cls": (1, 4, 16), "gen": (1, 4)}
ROUNDS = 5
THREADS = 2
NOISE = 0.1
WARMUP = 4  # the load generator's untimed requests (the protocol the results were measured with)
ME = "benchmarks.many_tasks_one_base"


def cli(name: str, *args) -> None:
    command(name, *args, env={"OMP_NUM_THREADS": "1"})


# -- build -------------------------------------------------------------------------------------------------
def task_checkpoint(kind: str, index: int) -> Path:
    """Task ``index``: the source checkpoint with seeded noise on every trained tensor (index 0: as trained)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = WORK / f"{kind}-task{index}"
    if (folder / "mixture.safetensors").exists():
        return folder
    tmp = WORK / f".{kind}-task{index}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SOURCES[kind], tmp)
    weights = load_file(tmp / "mixture.safetensors")
    generator = torch.Generator().manual_seed(1000 + index)
    for name, value in weights.items():
        if index and value.is_floating_point() and value.numel() > 1:
            weights[name] = value + NOISE * value.std() * torch.randn(value.shape, generator=generator)
    save_file(weights, tmp / "mixture.safetensors")
    tmp.rename(folder)
    return folder


def build(kinds: tuple[str, ...] = ("cls", "gen")) -> None:
    for kind in kinds:
        if not (SOURCES[kind] / "adamix_config.json").exists():
            raise SystemExit(f"{SOURCES[kind]} is missing: run python -m benchmarks.merged_exports build first")
    WORK.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        count = TASKS[kind]
        base = WORK / f"{kind}-base"
        if kind == "gen" and (base / "adamix_manifest.json").exists() and not _multi_adapter_fields(base):
            print(f"{base.name} was written before multi-adapter graphs: building it again", flush=True)
            for old in [base, *WORK.glob(f"{kind}-base-*")]:
                shutil.rmtree(old)
        for index in range(count):
            ckpt = task_checkpoint(kind, index)
            folded = WORK / f"{kind}-folded{index}"
            if not (folded / "adamix_manifest.json").exists():
                print(f"folded export {folded.name}", flush=True)
                cli("adamix-export", "--merge", ckpt, "--output", folded, "--overwrite")
            if not (base / "adapters" / f"task{index}" / "adapter_manifest.json").exists():
                print(f"adapter task{index} of {base.name}", flush=True)
                cli("adamix-export", "--merge", ckpt, "--adapter-of", base, "--adapter-name", f"task{index}",
                    "--overwrite")  # fmt: skip
        if kind == "cls" and not (WORK / "bottleneck-base" / "adapters" / "task0").exists():
            print("bottleneck adapter base", flush=True)
            cli("adamix-export", "--merge", BOTTLENECK_SOURCE, "--adapter-of", WORK / "bottleneck-base",
                "--adapter-name", "task0", "--overwrite")  # fmt: skip
        for n in SERVE_COUNTS[kind]:  # bases with the first n adapters (hard links: the same files)
            subset = WORK / f"{kind}-base-{n}"
            if not subset.exists():
                shutil.copytree(base, subset, copy_function=os.link, ignore=_other_adapters(n))
        if kind == "gen":
            _one_engine_each(WORK / f"{kind}-base-{max(SERVE_COUNTS[kind])}")
    print("built", flush=True)


def _multi_adapter_fields(base: Path) -> dict:
    manifest = json.loads((base / "adamix_manifest.json").read_text())["adapter_base"]
    return {k: manifest[k] for k in ("multi_adapter_file", "multi_adapter_absent") if k in manifest}


def _one_engine_each(base: Path) -> Path:
    """A copy of ``base`` (hard links) whose manifest names no multi-adapter graph: served as a base written
    before them, one engine per adapter."""
    folder = base.with_name(base.name + "-one-engine-each")
    if not folder.exists():
        tmp = folder.with_name("." + folder.name)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, copy_function=os.link, ignore=lambda d, names: ["adamix_manifest.json"])
        manifest = json.loads((base / "adamix_manifest.json").read_text())
        for key in ("multi_adapter_file", "multi_adapter_absent"):
            manifest["adapter_base"].pop(key, None)
        (tmp / "adamix_manifest.json").write_text(json.dumps(manifest, indent=2))
        tmp.rename(folder)
    return folder


def _other_adapters(n: int):
    keep = {f"task{i}" for i in range(n)}
    return lambda folder, names: [x for x in names if Path(folder).name == "adapters" and x not in keep]


# -- graph cost ----------------------------------------------------------------------------------------------
def graph_one(args) -> None:
    """In its own process: prints {"median_ms": ...} for one graph (and adapter) at one batch size."""
    import numpy as np
    from tokenizers import Tokenizer

    from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, classify_logits, open_session

    folder = Path(args.folder)
    session = open_session(folder / "model.onnx", threads=THREADS)
    active = ActiveAdapter(args.adapter) if args.adapter else None
    options = active.run_options if active else None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    tokenizer.enable_padding(length=128)
    encoded = tokenizer.encode_batch(["a gripping, funny and quietly devastating film " * 6] * args.batch)
    batch = {"input_ids": np.array([e.ids for e in encoded]), "attention_mask": np.array([e.attention_mask for e in encoded]),
             "token_type_ids": np.array([e.type_ids for e in encoded])}  # fmt: skip
    for _ in range(3):
        classify_logits(session, batch, options)
    runs = []
    for _ in range(30 if args.batch == 1 else 15):
        start = time.perf_counter()
        classify_logits(session, batch, options)
        runs.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"median_ms": statistics.median(runs)}))


def graph() -> None:
    bottleneck = WORK / "bottleneck-base"
    cases = {
        "folded export": (WORK / "cls-folded1", None),
        "base + adapter": (WORK / "cls-base", WORK / "cls-base" / "adapters" / "task1" / "adapter.onnx_adapter"),
        "bottleneck: folded export": (export_folder("cls-adapter"), None),
        "bottleneck: base + adapter": (bottleneck, bottleneck / "adapters" / "task0" / "adapter.onnx_adapter"),
    }
    rows = {}
    for _ in range(ROUNDS):
        for batch in (1, 8):
            for label, (folder, adapter) in cases.items():
                options = ["--adapter", adapter] if adapter else []
                out = child(ME, "graph-one", folder, "--batch", batch, *options)
                rows.setdefault(f"{label}|{batch}", []).append(out["median_ms"])
    _update({"graph": rows})
    report()


# -- servers -------------------------------------------------------------------------------------------------
def _load(
    url: str, kind: str, models: list[str], concurrency: int, count: int, batch: int = 1, tokens: int = 32
) -> dict:
    """``count`` requests spread round-robin over ``models``: ``batch`` sentences each, or one E2E prompt of up
    to ``tokens`` greedy tokens (tokens/s counted)."""
    texts = sentences()
    requests = []
    for i in range(count):
        model = models[i % len(models)]
        if kind == "gen":
            body = {"prompt": E2E_PROMPTS[i % len(E2E_PROMPTS)], "max_new_tokens": tokens}
            requests.append((f"{url}/v1/models/{model}/generate", body))
        else:
            body = {"inputs": [texts[(i + j) % len(texts)] for j in range(batch)]}
            requests.append((f"{url}/v1/models/{model}/classify", body))
    return load(requests, concurrency, warmup=WARMUP, count_tokens=kind == "gen")


def serve(kinds: tuple[str, ...] = ("cls", "gen"), quick: bool = False) -> None:
    """Every configuration, one server at a time. ``quick``: 8 new tokens a request, nothing saved (a check that
    the benchmark runs, not a measurement)."""
    rows = []
    port = 8790
    tokens = 8 if quick else 32
    for kind in kinds:
        for n in SERVE_COUNTS[kind]:
            layouts = ["adapters", "folded"] + (["adapters, one engine each"] if kind == "gen" and n > 1 else [])
            for layout in layouts:
                if layout == "adapters":
                    folders, models = [WORK / f"{kind}-base-{n}"], [f"task{i}" for i in range(n)]
                elif layout == "adapters, one engine each":
                    folders, models = [_one_engine_each(WORK / f"{kind}-base-{n}")], [f"task{i}" for i in range(n)]
                else:
                    folders = [WORK / f"{kind}-folded{i}" for i in range(n)]
                    models = [f.name for f in folders]
                port += 1
                server = adamix_server(folders, port, "--threads", str(THREADS))
                row = {"kind": kind, "tasks": n, "layout": layout, "ready_s": server.ready_s,
                       "rss_ready_mib": server.rss_ready["VmRSS"]}  # fmt: skip
                if kind == "cls":
                    row["b1"] = _load(server.url, kind, models[:1], 1, 200)
                    row["b8"] = _load(server.url, kind, models[:1], 1, 60, batch=8)
                    row["spread_c8"] = _load(server.url, kind, models, 8, 800)
                else:
                    row["multi_adapter_graph"] = layout == "adapters" and bool(
                        _multi_adapter_fields(folders[0]).get("multi_adapter_file")
                    )
                    row["one_at_a_time"] = _load(server.url, kind, models[:1], 1, 4, tokens=tokens)
                    row["spread_8"] = _load(server.url, kind, models, 8, 8, tokens=tokens)
                    row["same_8"] = _load(server.url, kind, models[:1], 8, 8, tokens=tokens)
                row["rss_peak_mib"] = server.memory()["VmHWM"]
                server.stop()
                rows.append(row)
                print(json.dumps(row), flush=True)
    if quick:
        print("quick run: nothing saved", flush=True)
        return
    saved = RESULTS / "adapters.json"
    # --only measures one kind: the other kind's rows stay as they were measured
    kept = (
        [r for r in json.loads(saved.read_text()).get("serve", []) if r["kind"] not in kinds]
        if saved.exists()
        else []
    )
    _update({"serve": kept + rows})
    report()


# -- results -------------------------------------------------------------------------------------------------
def _update(part: dict) -> None:
    path = RESULTS / "adapters.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(part)
    path.write_text(json.dumps(data, indent=1))


def report() -> None:
    data = json.loads((RESULTS / "adapters.json").read_text())
    out = Markdown()
    if "graph" in data:
        g = {k: statistics.median(v) for k, v in data["graph"].items()}
        rows = []
        for prefix, kind in (("", "LoRA"), ("bottleneck: ", "bottleneck")):
            if f"{prefix}folded export|1" not in g:
                continue
            for label in (f"{prefix}folded export", f"{prefix}base + adapter"):
                rows.append(
                    [f"{kind}: {label.removeprefix(prefix)}", f"{g[f'{label}|1']:.2f}", f"{g[f'{label}|8']:.2f}"]
                )
            ratio = [g[f"{prefix}base + adapter|{b}"] / g[f"{prefix}folded export|{b}"] for b in (1, 8)]
            rows.append([f"{kind}: base + adapter / folded", f"{ratio[0]:.3f}x", f"{ratio[1]:.3f}x"])
        out.table([f"MiniLM-L6, seq 128, {THREADS} threads (median of {ROUNDS} rounds)", "batch 1 ms", "batch 8 ms"],
                  rows)  # fmt: skip
    if "serve" in data:
        out()
        out.table(
            ["MiniLM-L6 tasks", "layout", "ready s", "RSS ready MiB", "peak MiB", "b1 p50 ms", "b8 p50 ms",
             "spread c=8 req/s"],
            [[r["tasks"], r["layout"], f"{r['ready_s']:.2f}", f"{r['rss_ready_mib']:.0f}", f"{r['rss_peak_mib']:.0f}",
              f"{r['b1']['p50_ms']:.2f}", f"{r['b8']['p50_ms']:.2f}", f"{r['spread_c8']['requests_per_s']:.1f}"]
             for r in data["serve"] if r["kind"] == "cls"],
        )  # fmt: skip
        out()
        out.table(
            ["SmolLM2-135M tasks", "layout", "ready s", "RSS ready MiB", "peak MiB", "tokens/s one at a time",
             "tokens/s 8 spread", "tokens/s 8 on one task"],
            [[r["tasks"], r["layout"], f"{r['ready_s']:.2f}", f"{r['rss_ready_mib']:.0f}", f"{r['rss_peak_mib']:.0f}",
              f"{r['one_at_a_time']['tokens_per_s']:.1f}", f"{r['spread_8']['tokens_per_s']:.1f}",
              f"{r['same_8']['tokens_per_s']:.1f}" if "same_8" in r else "-"]
             for r in data["serve"] if r["kind"] == "gen"],
        )  # fmt: skip
        _plot(data["serve"])
    publish(out, "adapters.md", "adapters")


def _plot(rows: list[dict]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for layout, color in (("adapters", "#4c72b0"), ("folded", "#dd8452")):
        for ax, kind in zip(axes[:2], ("cls", "gen"), strict=True):
            sel = [r for r in rows if r["kind"] == kind and r["layout"] == layout]
            ax.plot([r["tasks"] for r in sel], [r["rss_peak_mib"] for r in sel], "o-", color=color, label=layout)
            ax.set_title(f"{'MiniLM-L6' if kind == 'cls' else 'SmolLM2-135M'}: peak RSS")
            ax.set_xlabel("tasks served")
            ax.set_ylabel("MiB")
        sel = [r for r in rows if r["kind"] == "cls" and r["layout"] == layout]
        axes[2].plot([r["tasks"] for r in sel], [r["spread_c8"]["requests_per_s"] for r in sel], "o-", color=color,
                     label=layout)  # fmt: skip
    axes[2].set_title("MiniLM-L6: req/s spread over the tasks, c=8")
    axes[2].set_xlabel("tasks served")
    for ax in axes:
        ax.legend()
    save(fig, RESULTS / "adapters.png", 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("build", "graph", "serve", "report"):
        step = sub.add_parser(name)
        if name in ("build", "serve"):
            step.add_argument("--only", choices=tuple(TASKS), help="one kind: cls (MiniLM) or gen (SmolLM2)")
        if name == "serve":
            step.add_argument(
                "--quick", action="store_true", help="8 tokens a request (gen unless --only); saves nothing"
            )
    one = sub.add_parser("graph-one", help="(a child process) one graph at one batch size")
    one.add_argument("folder")
    one.add_argument("--batch", type=int, default=1)
    one.add_argument("--adapter")
    args = parser.parse_args()
    if args.what == "graph-one":
        graph_one(args)
    elif args.what in ("build", "serve"):
        kinds = (args.only,) if args.only else ("gen",) if getattr(args, "quick", False) else tuple(TASKS)
        if args.what == "build":
            build(kinds)
        else:
            serve(kinds, args.quick)
    else:
        {"graph": graph, "report": report}[args.what]()


if __name__ == "__main__":
    main()
