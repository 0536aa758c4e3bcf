"""The frontier's tables and plot from the result files: quality (greedy outputs as ids, scored here) and speed.
Written to results/frontier.json, results/frontier.png and docs/benchmarks/generation.md (block ``frontier``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS, WORK
from benchmarks.common.plots import pyplot, save
from benchmarks.common.trials import read_records
from benchmarks.generation_frontier import data

SUMMARY, PLOT, PAGE = RESULTS / "frontier.json", RESULTS / "frontier.png", "generation.md"
ROUNDS = WORK / "frontier-rounds"  # rounds.sh: batch-1 speed again, interleaved
REFERENCE = "ours:fp32"  # every BLEU difference is against our fp32 graph
KEPT_BLEU = 0.5  # "kept quality": within this many BLEU points of fp32
# a copy moves its bytes twice (read, then write), as STREAM's copy counts them: the memory traffic a decode step's
# weight reads can use is 2x the array size over the copy's time
READS_PER_COPY = 2


def texts(outputs: list[list[int]]) -> list[str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(data.EXPORT / "tokenizer.json"))
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]


def bytes_per_token(path: Path) -> int:
    """Weight bytes a decoded token reads: every initializer whole, except one only gathered from (directly or
    through a Transpose: the builder's tied embedding), of which one row."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def gathered_only(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(
            (u.op_type == "Gather" and u.input[0] == name)
            or (u.op_type == "Transpose" and gathered_only(u.output[0]))
            for u in users
        )

    total = 0
    for init in model.graph.initializer:
        size = _stored_bytes(init)
        rows = init.dims[0] if init.dims else 1
        total += size // rows if gathered_only(init.name) else size
    return total


def _stored_bytes(init) -> int:
    import numpy as np
    import onnx

    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return int(np.prod(init.dims)) * itemsize


def summarize() -> dict:
    from adamix_deploy.evaluation import generation_scores
    from benchmarks.decoder_quantization import paired_bootstrap
    from benchmarks.generation_frontier.__main__ import our_files

    refs = data.references()
    quality = {r["key"]: r for r in read_records(data.QUALITY)}
    speed = with_rounds({r["key"]: r for r in read_records(data.SPEED)})
    reference = texts(quality[REFERENCE]["outputs"]) if REFERENCE in quality else None
    files = our_files() if (data.EXPORT / "adamix_manifest.json").exists() else {}
    bandwidth = speed.get("bandwidth", {}).get("copy_gb_per_s")
    points = []
    for key, row in quality.items():
        predictions = texts(row["outputs"])
        scores = generation_scores(predictions, refs[: len(predictions)])
        point = {"key": key, "backend": row["backend"], "precision": row["precision"], "file_mb": row.get("file_mb"),
                 "mrs": len(predictions), "bleu": scores["bleu"], "rouge_l": scores["rouge_l"]}  # fmt: skip
        if reference is not None and key != REFERENCE and len(predictions) == len(reference):
            point["bleu_vs_fp32"] = paired_bootstrap(predictions, reference, refs)
        b1 = speed.get(_speed_key(row["backend"], row["precision"], 1))
        if b1:
            point |= {k: b1.get(k) for k in ("tokens_per_s", "first_token_ms", "peak_rss_mib", "load_s")}
            point |= {"speed_runs": b1.get("runs", 1), "tokens_per_s_runs": b1.get("tokens_per_s_runs")}
        c8 = speed.get(_speed_key(row["backend"], row["precision"], 8))
        if c8:
            point["tokens_per_s_c8"] = c8["tokens_per_s"]
        if row["backend"] == "ours" and row["precision"] in files:
            point["bytes_per_token"] = bytes_per_token(files[row["precision"]])
            if bandwidth and "tokens_per_s" in point:
                ceiling = READS_PER_COPY * bandwidth * 1e9 / point["bytes_per_token"]
                point |= {"ceiling_tokens_per_s": ceiling, "of_ceiling": point["tokens_per_s"] / ceiling}
        points.append(point)
    alternating = [r for k, r in speed.items() if k.startswith("alternating:")]
    summary = {"protocol": _protocol(), "bandwidth": speed.get("bandwidth"), "points": points,
               "our_caches": _our_caches(speed), "concurrency": _concurrency(speed),
               "alternating": alternating}  # fmt: skip
    return {**summary, "goals": goals(summary)}


def kept(point: dict) -> bool:
    """Quality kept: BLEU within KEPT_BLEU of our fp32 (the point estimate; its interval is reported beside)."""
    return point["key"] == REFERENCE or point.get("bleu_vs_fp32", [float("-inf")])[0] >= -KEPT_BLEU


def goals(summary: dict) -> dict:
    """The issue's goals, each as the measured ratio (None where a figure is missing)."""
    points = {p["key"]: p for p in summary["points"]}
    timed = [p for p in summary["points"] if p.get("tokens_per_s")]
    fastest_kept = max((p for p in timed if kept(p)), key=lambda p: p["tokens_per_s"], default=None)
    fastest_ours_kept = max((p for p in timed if kept(p) and p["backend"] == "ours"),
                            key=lambda p: p["tokens_per_s"], default=None)  # fmt: skip
    fp32 = points.get(REFERENCE, {}).get("tokens_per_s")
    default_int8 = default_variant("int8")
    int8 = points.get(f"ours:{default_int8}") if default_int8 else None
    levels = {(r["backend"], r["precision"]): r["tokens_per_s"] for r in summary["concurrency"]}
    scaling, served_vs_engine = {}, {}
    for (backend, precision), values in levels.items():
        c1, c8 = values.get(1, values.get("1")), values.get(8, values.get("8"))
        if c1 and c8:
            scaling[f"{backend} {precision}"] = c8 / c1
        engine = levels.get(("ours-engine", precision))
        if backend == "adamix-serve" and engine:
            served_vs_engine[precision] = {c: values[c] / engine[c] for c in values if c in engine}
    return {
        "fastest_kept": fastest_kept and fastest_kept["key"],
        "fastest_ours_kept": fastest_ours_kept and fastest_ours_kept["key"],
        "ours_kept_vs_fastest_kept": fastest_ours_kept and fastest_ours_kept["tokens_per_s"] / fastest_kept["tokens_per_s"],
        "ours_kept_of_ceiling": fastest_ours_kept and fastest_ours_kept.get("of_ceiling"),
        "default_int8": default_int8,
        "default_int8_vs_fp32": int8 and fp32 and int8.get("tokens_per_s", 0) / fp32,
        "default_int8_bleu_vs_fp32": int8 and int8.get("bleu_vs_fp32"),
        "c8_vs_c1": scaling,
        "served_vs_engine": served_vs_engine,
    }  # fmt: skip


def default_variant(precision: str) -> str | None:
    """The variant (`variants.VARIANTS`) that ``adamix-export --quantize PRECISION`` writes for builder decoders."""
    from adamix_deploy.exporters.quantize import BUILDER_DECODERS
    from benchmarks.generation_frontier.variants import VARIANTS

    return next((name for name, v in VARIANTS.items() if v == BUILDER_DECODERS[precision]), None)


def with_rounds(speed: dict) -> dict:
    """Batch-1 figures as medians over the speed run and the interleaved rounds (`rounds.sh`) where they exist:
    one process's bare run varied by up to ~15 % between identical files, so one run decides nothing."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(ROUNDS.glob("r*/speed.jsonl")):
        for row in read_records(path):
            runs.setdefault(row["key"], []).append(row)
    merged = dict(speed)
    for key, rows in runs.items():
        rows = ([speed[key]] if key in speed else []) + rows
        merged[key] = {**rows[0], "runs": len(rows)}
        for field in ("tokens_per_s", "first_token_ms", "copy_gb_per_s"):
            values = [r[field] for r in rows if field in r]
            if values:
                merged[key][field] = statistics.median(values)
                merged[key][f"{field}_runs"] = [round(v, 2) for v in values]
    return merged


def _speed_key(backend: str, precision: str, concurrency: int) -> str:
    # our quality comes from the loop the server uses (the shared-buffer cache where the graph allows it)
    return f"{'ours-shared' if backend == 'ours' else backend}:{precision}:c{concurrency}"


def _our_caches(speed: dict) -> list[dict]:
    rows = []
    for key, row in speed.items():
        if key.startswith("ours-shared:"):
            padded = speed.get(key.replace("ours-shared:", "ours-padded:"))
            if padded:
                rows.append({"precision": row["precision"], "shared": row["tokens_per_s"],
                             "padded": padded["tokens_per_s"], "ratio": row["tokens_per_s"] / padded["tokens_per_s"],
                             "first_token_ms_shared": row["first_token_ms"],
                             "first_token_ms_padded": padded["first_token_ms"]})  # fmt: skip
    return rows


def _concurrency(speed: dict) -> list[dict]:
    rows = []
    for backend in ("ours-engine", "adamix-serve", "genai-engine"):
        for precision in ("fp32", "int8", "int4"):
            found = {r["concurrency"]: r for r in speed.values() if (r.get("backend"), r.get("precision")) == (backend, precision)}  # fmt: skip
            if found:
                rows.append({"backend": backend, "precision": precision,
                             "tokens_per_s": {c: found[c]["tokens_per_s"] for c in sorted(found)}})  # fmt: skip
    return rows


def _protocol() -> dict:
    from benchmarks.generation_frontier import __main__ as frontier

    return {"threads": data.THREADS, "test_mrs": 200, "max_new_tokens": data.MAX_NEW_TOKENS,
            "speed_prompts": frontier.SPEED_PROMPTS, "speed_tokens": frontier.SPEED_TOKENS,
            "repeats": frontier.REPEATS, "concurrency": list(frontier.CONCURRENCY),
            "concurrent_prompts": frontier.CONCURRENT_PROMPTS, "kept_bleu": KEPT_BLEU}  # fmt: skip


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report() -> None:
    if data.QUALITY.exists() and data.REFERENCES.exists():
        SUMMARY.write_text(json.dumps(summarize(), indent=1))
    else:
        print(f"(no results in {data.FRONTIER}: the tables come from the committed {SUMMARY.name})")
    summary = json.loads(SUMMARY.read_text())
    out = Markdown()
    points = sorted(summary["points"], key=lambda p: -(p.get("tokens_per_s") or 0))
    out.table(
        ["backend", "precision", "MB", "BLEU", "vs our fp32 (95 % bootstrap)", "tokens/s b1 (runs)", "8 concurrent",
         "first token ms", "peak RSS MiB", "MB read / token", "of bandwidth ceiling"],
        [[p["backend"], p["precision"], _cell(p.get("file_mb"), ".0f"), f"{p['bleu']:.2f}",
          "{:+.2f} [{:+.2f}, {:+.2f}]".format(*p["bleu_vs_fp32"]) if p.get("bleu_vs_fp32") else "-",
          _cell(p.get("tokens_per_s"), ".1f") + (f" ({p['speed_runs']})" if p.get("speed_runs", 1) > 1 else ""),
          _cell(p.get("tokens_per_s_c8"), ".1f"),
          _cell(p.get("first_token_ms"), ".1f"), _cell(p.get("peak_rss_mib"), ".0f"),
          _cell(p["bytes_per_token"] / 1e6 if p.get("bytes_per_token") else None, ".0f"),
          _cell(p.get("of_ceiling"), ".2f")] for p in points],
    )  # fmt: skip
    if summary.get("bandwidth"):
        copy = summary["bandwidth"]["copy_gb_per_s"]
        out(
            f"\nMemory bandwidth: a numpy copy of a 1 GB array, best of 5, moves {copy:.1f} GB/s each way "
            f"({READS_PER_COPY * copy:.1f} GB/s of traffic, the ceiling's bandwidth)."
        )
    if summary["our_caches"]:
        out()
        out.table(["our file", "shared-buffer cache tokens/s", "padded numpy cache tokens/s", "ratio",
                   "first token ms (shared / padded)"],
                  [[r["precision"], f"{r['shared']:.1f}", f"{r['padded']:.1f}", f"{r['ratio']:.2f}x",
                    f"{r['first_token_ms_shared']:.1f} / {r['first_token_ms_padded']:.1f}"]
                   for r in summary["our_caches"]])  # fmt: skip
    if summary.get("alternating"):
        out()
        out.table(["same graph, one process, alternating (5 rounds)", "genai's loop tokens/s", "ours tokens/s",
                   "ours / genai (median of rounds)"],
                  [[r["file"], " / ".join(map(str, r["genai"])), " / ".join(map(str, r["ours"])),
                    f"{r['ours_vs_genai']:.2f}x"] for r in summary["alternating"]])  # fmt: skip
    if summary["concurrency"]:
        levels = sorted({int(c) for r in summary["concurrency"] for c in r["tokens_per_s"]})
        out()
        out.table(["path", "precision", *[f"{c} concurrent" for c in levels], "8 vs 1"],
                  [[r["backend"], r["precision"], *[_cell(r["tokens_per_s"].get(str(c), r["tokens_per_s"].get(c)), ".1f") for c in levels],
                    _ratio(r["tokens_per_s"], 8, 1)] for r in summary["concurrency"]])  # fmt: skip
    g = summary.get("goals", {})
    if g:
        out()
        out(
            f"- fastest at kept quality (BLEU within {KEPT_BLEU} of our fp32): {g['fastest_kept']}; ours: "
            f"{g['fastest_ours_kept']} at {_cell(g['ours_kept_vs_fastest_kept'], '.2f')}x its speed and "
            f"{_cell(g['ours_kept_of_ceiling'], '.2f')} of its bandwidth ceiling"
        )
        out(
            f"- `--quantize int8` ({g['default_int8']}): {_cell(g['default_int8_vs_fp32'], '.2f')}x our fp32 at batch 1"
        )
        out("- 8 concurrent vs 1: " + ", ".join(f"{k} {v:.2f}x" for k, v in g["c8_vs_c1"].items()))
        out(
            "- served / in-process engine: "
            + ", ".join(
                f"{p} " + "/".join(f"{v:.2f}" for v in values.values())
                for p, values in g["served_vs_engine"].items()
            )
        )
    publish(out, PAGE, "frontier")
    plot(summary, PLOT)


def _ratio(values: dict, a: int, b: int) -> str:
    top, bottom = values.get(str(a), values.get(a)), values.get(str(b), values.get(b))
    return f"{top / bottom:.2f}x" if top and bottom else "-"


def plot(summary: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {"ours": "tab:blue", "onnxruntime-genai": "tab:green", "llama.cpp": "tab:red", "pytorch": "tab:gray"}
    fp32 = next((p["bleu"] for p in summary["points"] if p["key"] == REFERENCE), None)
    for p in summary["points"]:
        if not p.get("tokens_per_s"):
            continue
        colour = colours.get(p["backend"], "tab:purple")
        ax.scatter([p["tokens_per_s"]], [p["bleu"]], color=colour, s=36)
        ax.annotate(f"{p['backend']} {p['precision']}", (p["tokens_per_s"], p["bleu"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    if fp32 is not None:
        ax.axhline(fp32 - KEPT_BLEU, color="black", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], fp32 - KEPT_BLEU, f" fp32 - {KEPT_BLEU} BLEU", fontsize=7, va="bottom")
    ax.set_xlabel(f"tokens/s, batch 1, {summary['protocol']['threads']} threads")
    ax.set_ylabel(f"E2E test BLEU ({summary['protocol']['test_mrs']} MRs, all references, greedy)")
    ax.set_title("SmolLM2-135M E2E LoRA (merged): speed against quality, one point per backend x precision")
    save(fig, path, 120)
