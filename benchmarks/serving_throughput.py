"""How fast is adamix-serve against the bare onnxruntime call and the server a user would otherwise write
(FastAPI + a transformers pipeline)? On the merged MiniLM-L6 SST-2 export; and SmolLM2 tokens/s through the
server against PyTorch `generate`.

    python -m benchmarks.serving_throughput all      # exports come from `benchmarks.merged_exports build`
    python -m benchmarks.serving_throughput floor    # adds the HTTP floor (a 404 answer) to serve.json
    python -m benchmarks.serving_throughput report   # tables (and docs/benchmarks/serving.md), plot

Every server runs in its own process, one at a time; the load generator (`benchmarks.common.load`) is another
process on the same cores, identical for every server, so it costs all of them alike. Requests cycle through
64 SST-2 dev sentences (or built-in ones when the data is absent), one sentence per request. Latencies are per
request (p50, p99); throughput is requests / wall time of the whole run. Results: results/serve.json, serve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.common.load import (
    CONCURRENCY,
    E2E_PROMPTS,
    REQUESTS,
    generation_tokens_per_s,
    load,
    load_cells,
    load_columns,
    sentence_requests,
    sentences,
)
from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import REPO, RESULTS
from benchmarks.common.plots import pyplot, save
from benchmarks.common.servers import BIN, Server, adamix_server
from benchmarks.common.subprocesses import child, step
from benchmarks.merged_exports import export_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CLS, GEN = export_folder("cls-lora"), export_folder("gen-lora")
SERVE_JSON = RESULTS / "serve.json"


def plain_server(port: int) -> Server:
    command = [str(BIN / "uvicorn"), "benchmarks.plain_transformers_server:app", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return Server(command, "/health", port, env={"MODEL_DIR": str(CLS / "merged"), "PYTHONPATH": str(REPO)})


def bare_main(folder: str) -> None:
    """The floor: the exported session called directly on each sentence (batch 1), tokenisation included."""
    from adamix_deploy.serving.engine.model_folder import read_model_folder
    from adamix_deploy.serving.engine.onnx_loops import classify_logits
    from adamix_deploy.serving.engine.text import encode_for_classification, pad_batch

    model = read_model_folder(folder)
    model.load(threads=None, gpu=False)
    texts = sentences()
    times = []
    for repeat in range(6):
        for text in texts:
            start = time.perf_counter()
            items = encode_for_classification(
                model.tokenizer, model.truncating_tokenizer, [text], model.max_tokens, False
            )
            classify_logits(model.session, pad_batch(items, model.pad_token_id))
            if repeat:  # the first pass warms up
                times.append(time.perf_counter() - start)
    print(json.dumps({"p50_ms": round(1000 * statistics.median(times), 3), "calls": len(times)}))


def torch_generate_main(folder: str, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, seconds = 0, 0.0
    for i, prompt in enumerate(E2E_PROMPTS * 2):
        ids = tokenizer(prompt + "\n", return_tensors="pt").input_ids
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        if i:  # the first call warms up
            seconds += time.perf_counter() - start
            tokens += out.shape[1] - ids.shape[1]
    print(json.dumps({"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}))


# -- the benchmark -------------------------------------------------------------------------------------------
def run_all() -> None:
    if not (CLS / "adamix_manifest.json").exists() or not (GEN / "adamix_manifest.json").exists():
        step("benchmarks.merged_exports", "build")
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "sentences": len(sentences())}
    bare = child("benchmarks.serving_throughput", "bare", CLS)
    results["bare_onnxruntime_p50_ms"] = bare["p50_ms"]
    print(f"bare onnxruntime session call, batch 1: p50 {bare['p50_ms']} ms", flush=True)
    servers = {
        "adamix-serve, batching on": lambda: adamix_server(CLS, 8101),
        "adamix-serve, batching off": lambda: adamix_server(CLS, 8102, "--max-batch-size", "1"),
        "FastAPI + transformers pipeline": lambda: plain_server(8103),
    }
    rows = []
    for name, start in servers.items():
        server = start()
        path = "/classify" if "transformers" in name else f"/v1/models/{CLS.name}/classify"
        row = {"server": name, "ready_s": server.ready_s, "rss_ready_mib": server.rss_ready["VmRSS"]}
        for c in CONCURRENCY:
            row[f"c{c}"] = load(sentence_requests(server.url + path, REQUESTS[c]), c)
            print(f"{name:34s} c={c:2d}: {row[f'c{c}']}", flush=True)
        row["rss_after_mib"] = server.memory()["VmHWM"]
        server.stop()
        rows.append(row)
    results["classification"] = rows
    ours, plain = rows[0], rows[2]
    results["goals"] = {
        "c1_p50_vs_bare": round(ours["c1"]["p50_ms"] / bare["p50_ms"], 2),
        "c32_throughput_vs_plain": round(ours["c32"]["requests_per_s"] / plain["c32"]["requests_per_s"], 2),
    }
    results["http_floor_c1_p50_ms"] = http_floor()
    results["generation"] = generation()
    SERVE_JSON.write_text(json.dumps(results, indent=2))
    report()


def http_floor() -> float:
    """What HTTP alone costs at concurrency 1 with this client: the same POST to a model name that does not
    exist, answered 404 after JSON parsing and validation, with no tokenisation and no onnxruntime call."""
    server = adamix_server(CLS, 8105)
    floor = load(sentence_requests(f"{server.url}/v1/models/no-such-model/classify", REQUESTS[1]), 1)["p50_ms"]
    server.stop()
    print(f"HTTP floor (404 answer, same client), c=1: p50 {floor} ms", flush=True)
    return floor


def generation() -> dict:
    max_new = 48
    server = adamix_server(GEN, 8104)
    url = f"{server.url}/v1/models/{GEN.name}/generate"
    sequential, batched = generation_tokens_per_s(
        url, E2E_PROMPTS * 2, {"max_new_tokens": max_new, "temperature": 0}
    )
    memory = server.memory()
    server.stop()
    torch_run = child("benchmarks.serving_throughput", "torch-generate", GEN / "merged", max_new)
    out = {
        "max_new_tokens": max_new, "prompts": len(E2E_PROMPTS) * 2,
        "server_tokens_per_s_sequential": round(sequential, 1),
        "server_tokens_per_s_8_concurrent": round(batched, 1),
        "pytorch_generate_tokens_per_s": torch_run["tokens_per_s"],
        "server_ready_s": server.ready_s, "server_rss_mib": memory["VmHWM"],
    }  # fmt: skip
    print(f"SmolLM2: {out}", flush=True)
    return out


def report() -> None:
    results = json.loads(SERVE_JSON.read_text())
    out = Markdown()
    out(f"MiniLM-L6 merged LoRA, SST-2 sentences, {results['machine']}; bare onnxruntime call (tokenise + pad + "
        f"`session.run`, batch 1) p50 {results['bare_onnxruntime_p50_ms']} ms\n")  # fmt: skip
    out.table(["server", "ready s", "peak RSS MiB", *load_columns()],
              [[row["server"], row["ready_s"], row["rss_after_mib"], *load_cells(row)] for row in results["classification"]])  # fmt: skip
    goals = results["goals"]
    out(f"\nc=1 p50 / bare call: {goals['c1_p50_vs_bare']}x (goal ≤ 1.3x); c=32 throughput / the transformers "
        f"server: {goals['c32_throughput_vs_plain']}x (goal ≥ 2x)")  # fmt: skip
    if "http_floor_c1_p50_ms" in results:
        out(f"\nHTTP floor at c=1 (a 404 answer, same client): p50 {results['http_floor_c1_p50_ms']} ms")
    g = results["generation"]
    out(f"\nSmolLM2-135M merged LoRA ({g['prompts']} E2E records, greedy, up to {g['max_new_tokens']} new tokens, "
        "fp32):\n")  # fmt: skip
    out.table(
        ["server, one request at a time", f"server, {g['prompts']} requests at once", "PyTorch `generate`",
         "server ready s", "server peak RSS MiB"],
        [[f"{g['server_tokens_per_s_sequential']} tokens/s", f"{g['server_tokens_per_s_8_concurrent']} tokens/s",
          f"{g['pytorch_generate_tokens_per_s']} tokens/s", g["server_ready_s"], g["server_rss_mib"]]],
    )  # fmt: skip
    publish(out, "serving.md", "serving")
    _plot(results)


def _plot(results: dict) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in results["classification"]:
        left.plot(
            CONCURRENCY, [row[f"c{c}"]["requests_per_s"] for c in CONCURRENCY], marker="o", label=row["server"]
        )
        right.plot(CONCURRENCY, [row[f"c{c}"]["p50_ms"] for c in CONCURRENCY], marker="o", label=row["server"])
    left.set(
        xlabel="concurrent clients", ylabel="requests / s", title="Throughput (MiniLM-L6, 2 cores)", xscale="log"
    )
    right.set(
        xlabel="concurrent clients", ylabel="p50 latency, ms", title="Median latency", xscale="log", yscale="log"
    )
    right.axhline(results["bare_onnxruntime_p50_ms"], color="grey", linestyle=":", label="bare onnxruntime call")
    for ax in (left, right):
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.legend(fontsize=8)
    save(fig, RESULTS / "serve.png", 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("all")
    sub.add_parser("report")
    sub.add_parser("floor")
    sub.add_parser("bare", help="(a child process) the bare session call").add_argument("folder")
    g = sub.add_parser("torch-generate", help="(a child process) PyTorch generate")
    g.add_argument("folder")
    g.add_argument("max_new_tokens", type=int)
    args = parser.parse_args()
    if args.command == "all":
        run_all()
    elif args.command == "report":
        report()
    elif args.command == "floor":
        results = json.loads(SERVE_JSON.read_text())
        results["http_floor_c1_p50_ms"] = http_floor()
        SERVE_JSON.write_text(json.dumps(results, indent=2))
    elif args.command == "bare":
        bare_main(args.folder)
    else:
        torch_generate_main(args.folder, args.max_new_tokens)


if __name__ == "__main__":
    main()
