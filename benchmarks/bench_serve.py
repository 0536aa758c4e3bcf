"""Serving benchmark (issue 4): adamix-serve against a bare onnxruntime call and a plain FastAPI + transformers
server, on the merged MiniLM-L6 SST-2 export; SmolLM2 tokens/s through the server against PyTorch generate.

    python benchmarks/bench_serve.py all       # exports come from bench_export.py build (run when missing)
    python benchmarks/bench_serve.py report

Every server runs in its own process, one at a time; the load generator (asyncio + httpx) is another
process on the same 2 cores, identical for every server, so it costs all of them alike. Requests cycle
through 64 SST-2 dev sentences (or built-in ones when the data is absent), one sentence per request.
Latencies are per request (p50, p99); throughput is requests / wall time of the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = RESULTS / "tmp"
SST2_DEV = ROOT.parent.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
CLS = WORK / "cls-lora.onnx"
GEN = WORK / "gen-lora.onnx"
BIN = Path(sys.executable).parent
CONCURRENCY = (1, 8, 32)
REQUESTS = {1: 300, 8: 800, 32: 1600}
E2E_PROMPTS = [
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside]",
    "name[Zizzi], eatType[pub], food[Italian], customer rating[5 out of 5], near[The Sorrento]",
    "name[Blue Spice], food[Chinese], priceRange[cheap], area[city centre], familyFriendly[yes]",
    "name[The Mill], eatType[restaurant], food[Indian], priceRange[high], near[Café Rouge]",
]


KSERVE_BODY = "kserve-v2"  # `load`'s body_key for the Open Inference Protocol's body (see request_body)


def request_body(body_key: str, text: str) -> dict:
    """One sentence as a request: ``{body_key: [text]}``, or for KSERVE_BODY the Open Inference Protocol's BYTES
    tensor of shape [1, 1], the same bytes for adamix-serve's /v2 routes (one process or Ray) and for Triton."""
    if body_key == KSERVE_BODY:
        return {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
    return {body_key: [text]}


def sentences() -> list[str]:
    if SST2_DEV.exists():
        lines = SST2_DEV.read_text().splitlines()[1:65]
        return [line.split("\t")[0] for line in lines]
    return [f"an example sentence number {i} that is quite good" for i in range(64)]


# -- processes -----------------------------------------------------------------------------------------------
def wait_for(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    sys.exit(f"{url} not up after {timeout} s")


def rss_mib(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


class Server:
    def __init__(self, command: list[str], ready_path: str, port: int, env: dict | None = None):
        self.url = f"http://127.0.0.1:{port}"
        start = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})  # fmt: skip
        wait_for(self.url + ready_path, self.proc)
        self.ready_s = round(time.perf_counter() - start, 2)
        self.rss_ready = rss_mib(self.proc.pid)

    def stop(self) -> dict:
        memory = rss_mib(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(60)
        return memory


def adamix_server(folder: Path, port: int, *options: str) -> Server:
    command = [str(BIN / "adamix-serve"), str(folder), "--port", str(port), "--log-level", "warning", *options]
    return Server(command, "/ready", port)


def plain_server(port: int) -> Server:
    command = [str(BIN / "uvicorn"), "benchmarks.plain_transformers_server:app", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return Server(command, "/health", port, env={"MODEL_DIR": str(CLS / "merged"), "PYTHONPATH": str(ROOT.parent)})


def load(url: str, concurrency: int, count: int, body_key: str) -> dict:
    """Runs the load generator in its own process; returns its JSON."""
    out = subprocess.run([sys.executable, __file__, "load", url, str(concurrency), str(count), body_key],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def load_main(url: str, concurrency: int, count: int, body_key: str) -> None:
    import httpx

    texts = sentences()
    bodies = [request_body(body_key, texts[i % len(texts)]) for i in range(count)]

    async def run() -> tuple[list[float], float, int]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        latencies: list[float] = []
        failures = 0
        queue = list(reversed(bodies))
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            for body in bodies[: min(16, count)]:  # warm connections and caches, not timed
                await client.post(url, json=body)

            async def worker():
                nonlocal failures
                while queue:
                    body = queue.pop()
                    start = time.perf_counter()
                    response = await client.post(url, json=body)
                    latencies.append(time.perf_counter() - start)
                    failures += response.status_code != 200

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, time.perf_counter() - start, failures

    latencies, wall, failures = asyncio.run(run())
    latencies.sort()
    print(json.dumps({
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "throughput_rps": round(count / wall, 1),
        "requests": count, "failures": failures,
    }))  # fmt: skip


def bare_main(folder: str) -> None:
    """The floor: the exported session called directly on each sentence (batch 1), tokenisation included."""
    sys.path.insert(0, str(ROOT.parent))
    from adamix_deploy.exporters.onnx_loops import classify_logits
    from adamix_deploy.serving.model_folder import read_model_folder
    from adamix_deploy.serving.text import encode_for_classification, pad_batch

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
        subprocess.run([sys.executable, str(ROOT / "bench_export.py"), "build"], check=True)
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "sentences": len(sentences())}
    bare = json.loads(subprocess.run([sys.executable, __file__, "bare", str(CLS)], capture_output=True,
                                     text=True, check=True).stdout)  # fmt: skip
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
            row[f"c{c}"] = load(server.url + path, c, REQUESTS[c], "inputs")
            print(f"{name:34s} c={c:2d}: {row[f'c{c}']}", flush=True)
        row["rss_after_mib"] = server.stop()["VmHWM"]
        rows.append(row)
    results["classification"] = rows
    ours, plain = rows[0], rows[2]
    results["goals"] = {
        "c1_p50_vs_bare": round(ours["c1"]["p50_ms"] / bare["p50_ms"], 2),
        "c32_throughput_vs_plain": round(ours["c32"]["throughput_rps"] / plain["c32"]["throughput_rps"], 2),
    }
    results["http_floor_c1_p50_ms"] = http_floor()
    results["generation"] = generation()
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2))
    report()


def http_floor() -> float:
    """What HTTP alone costs at concurrency 1 with this client: the same POST to a model name that does not
    exist, answered 404 after JSON parsing and validation, with no tokenisation and no onnxruntime call."""
    server = adamix_server(CLS, 8105)
    floor = load(f"{server.url}/v1/models/no-such-model/classify", 1, REQUESTS[1], "inputs")["p50_ms"]
    server.stop()
    print(f"HTTP floor (404 answer, same client), c=1: p50 {floor} ms", flush=True)
    return floor


def generation() -> dict:
    import httpx

    max_new = 48
    server = adamix_server(GEN, 8104)
    url = f"{server.url}/v1/models/{GEN.name}/generate"
    body = {"max_new_tokens": max_new, "temperature": 0}
    httpx.post(url, json={**body, "prompt": E2E_PROMPTS[0]}, timeout=300)  # warm-up
    tokens, start = 0, time.perf_counter()
    for prompt in E2E_PROMPTS * 2:
        tokens += httpx.post(url, json={**body, "prompt": prompt}, timeout=300).json()["usage"][
            "completion_tokens"
        ]
    sequential = tokens / (time.perf_counter() - start)

    async def concurrent() -> int:
        async with httpx.AsyncClient(timeout=300) as client:
            responses = await asyncio.gather(
                *(client.post(url, json={**body, "prompt": p}) for p in E2E_PROMPTS * 2)
            )
        return sum(r.json()["usage"]["completion_tokens"] for r in responses)

    start = time.perf_counter()
    batched_tokens = asyncio.run(concurrent())
    batched = batched_tokens / (time.perf_counter() - start)
    memory = server.stop()
    torch_run = json.loads(subprocess.run([sys.executable, __file__, "torch-generate", str(GEN / "merged"), str(max_new)],
                                          capture_output=True, text=True, check=True).stdout)  # fmt: skip
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
    results = json.loads((RESULTS / "serve.json").read_text())
    print(f"\nMiniLM-L6 merged LoRA, SST-2 sentences, {results['machine']}; bare onnxruntime p50 "
          f"{results['bare_onnxruntime_p50_ms']} ms")  # fmt: skip
    header = (
        "| server | ready s | RSS MiB | "
        + " | ".join(f"c={c} p50 / p99 ms | c={c} req/s" for c in CONCURRENCY)
        + " |"
    )
    print(header)
    print("|" + "---|" * (3 + 2 * len(CONCURRENCY)))
    for row in results["classification"]:
        cells = [row["server"], str(row["ready_s"]), str(row["rss_after_mib"])]
        for c in CONCURRENCY:
            r = row[f"c{c}"]
            cells += [f"{r['p50_ms']} / {r['p99_ms']}", str(r["throughput_rps"])]
        print("| " + " | ".join(cells) + " |")
    print(f"goals: {results['goals']} (want c1_p50_vs_bare <= 1.3, c32_throughput_vs_plain >= 2)")
    if "http_floor_c1_p50_ms" in results:
        print(f"HTTP floor at c=1 (404 answer, same client): p50 {results['http_floor_c1_p50_ms']} ms")
    print(f"SmolLM2: {results['generation']}")
    _plot(results)


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in results["classification"]:
        left.plot(
            CONCURRENCY, [row[f"c{c}"]["throughput_rps"] for c in CONCURRENCY], marker="o", label=row["server"]
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
    fig.tight_layout()
    fig.savefig(RESULTS / "serve.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("all")
    sub.add_parser("report")
    sub.add_parser("floor")
    p = sub.add_parser("load")
    p.add_argument("url")
    p.add_argument("concurrency", type=int)
    p.add_argument("count", type=int)
    p.add_argument("body_key")
    sub.add_parser("bare").add_argument("folder")
    g = sub.add_parser("torch-generate")
    g.add_argument("folder")
    g.add_argument("max_new_tokens", type=int)
    args = parser.parse_args()
    if args.command == "all":
        run_all()
    elif args.command == "report":
        report()
    elif args.command == "floor":  # adds the HTTP floor to an existing serve.json
        results = json.loads((RESULTS / "serve.json").read_text())
        results["http_floor_c1_p50_ms"] = http_floor()
        (RESULTS / "serve.json").write_text(json.dumps(results, indent=2))
    elif args.command == "load":
        load_main(args.url, args.concurrency, args.count, args.body_key)
    elif args.command == "bare":
        bare_main(args.folder)
    else:
        torch_generate_main(args.folder, args.max_new_tokens)


if __name__ == "__main__":
    main()
