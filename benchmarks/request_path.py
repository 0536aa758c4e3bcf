"""Where does adamix-serve's classification time go? The bare onnxruntime call, the same runtime in-process, a
per-stage breakdown of one request through the ASGI app, and the server over HTTP with two load generators.

    python -m benchmarks.request_path measure EXPORT [--rounds 2]
    python -m benchmarks.request_path report      # the tables again (and docs/benchmarks/request-path.md), plot

EXPORT is a classification export folder (e.g. MiniLM-L6 SST-2: results/tmp/cls-lora.onnx from
`benchmarks.merged_exports build`). One SST-2 dev sentence per request, cycling through the same 64 sentences
everywhere (`benchmarks.common.load.sentences`). Every measurement runs in its own process, one after the other,
ROUNDS times in alternation (A, B, C, A, B, C), medians reported: run it alone.
- bare: tokenisation + padding + `InferenceSession.run` on one sentence, in a loop (serving_throughput's floor).
- in-process runtime: `ModelRuntime.classify` (batcher, executor hop, softmax), 1 and 32 concurrent callers.
- breakdown: timestamps at each stage of one request through the FastAPI app called directly (no socket).
- HTTP: `adamix-serve` measured with wrk (C, one connection per concurrent client; Debian's `wrk`) and with
  Python clients (http.client keep-alive at c=1; the common httpx load generator), to show the client's own
  cost: every client and the server share the same cores.
Results: results/request_path.json, request_path.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common.load import load, sentence_requests, sentences
from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS
from benchmarks.common.plots import pyplot, save
from benchmarks.common.servers import adamix_server
from benchmarks.common.subprocesses import child

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ME = "benchmarks.request_path"
WRK_SCRIPT = """
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do table.insert(bodies, line) end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


# -- measurements, each run in a fresh process -------------------------------------------------------------------
def runtime_main(folder: str, concurrency: int, count: int) -> dict:
    import uvloop

    from adamix_deploy.serving.engine.model_folder import read_model_folder
    from adamix_deploy.serving.engine.runtime import ModelRuntime, ServerSettings
    from adamix_deploy.serving.metrics import ServerMetrics

    async def run() -> dict:
        runtime = ModelRuntime(read_model_folder(folder), ServerSettings(), ServerMetrics())
        await runtime.start()
        texts, left, latencies = sentences(), list(range(count)), []
        for text in texts:
            await runtime.classify([text])

        async def caller():
            while left:
                i = left.pop()
                start = time.perf_counter()
                await runtime.classify([texts[i % len(texts)]])
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        await runtime.stop()
        return {"p50_ms": 1000 * statistics.median(latencies), "sentences_per_s": count / wall}

    return uvloop.run(run())


def breakdown_main(folder: str, count: int) -> dict:
    """Stage timestamps of sequential requests through the ASGI app (wrapping the functions on the path)."""
    import uvloop

    import adamix_deploy.serving.engine.batching as batching
    import adamix_deploy.serving.engine.runtime as runtime_module
    from adamix_deploy.serving.engine.model_folder import read_model_folder
    from adamix_deploy.serving.engine.runtime import ServerSettings
    from adamix_deploy.serving.http.app import create_app, start_models

    marks: dict[str, float] = {}

    def timed(function, before: str, after: str, is_async: bool = False):
        if is_async:

            async def wrapper(*a, **k):
                marks[before] = time.perf_counter()
                result = await function(*a, **k)
                marks[after] = time.perf_counter()
                return result
        else:

            def wrapper(*a, **k):
                marks[before] = time.perf_counter()
                result = function(*a, **k)
                marks[after] = time.perf_counter()
                return result

        return wrapper

    runtime_module.encode_for_classification = timed(runtime_module.encode_for_classification, "tok0", "tok1")
    batching.run_length_sorted = timed(batching.run_length_sorted, "run0", "run1")
    cls = batching.ClassificationBatcher
    cls.classify = timed(cls.classify, "queue0", "queue1", is_async=True)
    rt = runtime_module.ModelRuntime
    rt.classify = timed(rt.classify, "handler0", "handler1", is_async=True)
    stages = {
        "HTTP app in: middleware, routing, body JSON + validation": ("start", "handler0"),
        "tokenisation": ("tok0", "tok1"),
        "batcher queue -> executor thread": ("queue0", "run0"),
        "padding + onnxruntime run": ("run0", "run1"),
        "executor thread -> event loop": ("run1", "queue1"),
        "softmax + result objects": ("queue1", "handler1"),
        "response model + JSON + middleware out": ("handler1", "end"),
    }

    async def run() -> dict:
        model = read_model_folder(folder)
        app = create_app([model], ServerSettings())
        await start_models(app)
        bodies = [json.dumps({"inputs": [t]}).encode() for t in sentences()]
        rows = []
        for i in range(count + 64):
            marks.clear()
            marks["start"] = time.perf_counter()
            await _asgi_post(app, f"/v1/models/{model.name}/classify", bodies[i % len(bodies)])
            marks["end"] = time.perf_counter()
            if i >= 64:
                rows.append(
                    {name: marks[b] - marks[a] for name, (a, b) in stages.items()}
                    | {"total": marks["end"] - marks["start"]}
                )
        return {k: 1e6 * statistics.median(r[k] for r in rows) for k in rows[0]}

    return uvloop.run(run())


async def _never_disconnects() -> dict:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


async def _asgi_post(app, path: str, body: bytes) -> int:
    from adamix_deploy.serving.http.middleware import replay_body

    receive = replay_body(body, _never_disconnects)
    status = {}

    async def send(message):
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip
    await app(scope, receive, send)
    return status["code"]


def raw_client_main(url: str, count: int) -> dict:
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port)
    texts, latencies = sentences(), []
    for i in range(count + 50):
        body = json.dumps({"inputs": [texts[i % len(texts)]]}).encode()
        start = time.perf_counter()
        connection.request("POST", parsed.path, body, {"content-type": "application/json"})
        connection.getresponse().read()
        if i >= 50:
            latencies.append(time.perf_counter() - start)
    return {"p50_ms": 1000 * statistics.median(latencies)}


def wrk(url: str, concurrency: int, seconds: int, work: Path) -> dict:
    script, bodies = work / "post.lua", work / "bodies.txt"
    script.write_text(WRK_SCRIPT)
    bodies.write_text("\n".join(json.dumps({"inputs": [t]}) for t in sentences()) + "\n")
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
    ]
    subprocess.run([*command[:3], "-d2s", *command[4:]], capture_output=True, check=True)  # warm-up
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    value = {unit: 1.0 for unit in ("ms",)} | {"us": 0.001, "s": 1000.0}

    def ms(label: str) -> float:
        number, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(number) * value[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms("50%"), "p99_ms": ms("99%"), "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0}  # fmt: skip


def measure(folder: Path, rounds: int) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    runs: dict[str, list[dict]] = {}
    work = Path(tempfile.mkdtemp())
    url = f"/v1/models/{folder.name}/classify"
    for r in range(rounds):
        runs.setdefault("bare", []).append(child("benchmarks.serving_throughput", "bare", folder))
        runs.setdefault("runtime c=1", []).append(child(ME, "child", "runtime", folder, 1, 600))
        runs.setdefault("runtime c=32", []).append(child(ME, "child", "runtime", folder, 32, 1600))
        runs.setdefault("breakdown", []).append(child(ME, "child", "breakdown", folder, 600))
        server = adamix_server(folder, 8600 + r)
        runs.setdefault("http wrk c=1", []).append(wrk(server.url + url, 1, 8, work))
        runs.setdefault("http wrk c=32", []).append(wrk(server.url + url, 32, 10, work))
        runs.setdefault("http python http.client c=1", []).append(child(ME, "child", "raw", server.url + url, 600))
        runs.setdefault("http httpx c=1", []).append(load(sentence_requests(server.url + url, 300), 1))
        runs.setdefault("http httpx c=32", []).append(load(sentence_requests(server.url + url, 1600), 32))
        runs.setdefault("404 wrk c=1", []).append(
            wrk(f"{server.url}/v1/models/no-such-model/classify", 1, 4, work)
        )
        runs.setdefault("404 httpx c=1", []).append(
            load(sentence_requests(f"{server.url}/v1/models/no-such-model/classify", 300), 1)
        )
        server.stop()
        print(f"round {r + 1}/{rounds} done", flush=True)
    shutil.rmtree(work)
    median = {name: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for name, rows in runs.items()}
    return {"export": str(folder), "rounds": rounds, "cores": os.cpu_count(), "runs": runs, "median": median}


def report(results: dict) -> None:
    m = results["median"]
    bare = m["bare"]["p50_ms"]
    labels = {
        "bare": "bare: tokenise + pad + `session.run`, in a loop", "runtime c=1": "in-process `ModelRuntime.classify`, 1 caller",
        "runtime c=32": "in-process `ModelRuntime.classify`, 32 callers", "http wrk c=1": "HTTP, wrk, c=1",
        "http python http.client c=1": "HTTP, http.client, c=1", "http httpx c=1": "HTTP, httpx, c=1",
        "http wrk c=32": "HTTP, wrk, c=32", "http httpx c=32": "HTTP, httpx, c=32",
        "404 wrk c=1": "404 answer, wrk, c=1", "404 httpx c=1": "404 answer, httpx, c=1",
    }  # fmt: skip
    inproc = m["runtime c=32"]["sentences_per_s"]
    rows = []
    for name, label in labels.items():
        row = m[name]
        rate = row.get("requests_per_s") or row.get("sentences_per_s")
        versus = f"{row['p50_ms'] / bare:.2f}x" if "c=32" not in name and "404" not in name else "-"
        relative = f" ({rate / inproc:.2f}x in-process)" if name.startswith("http") and "c=32" in name else ""
        rows.append([label, f"{row['p50_ms']:.2f}", versus, f"{rate:.1f} /s{relative}" if rate else "-"])
    out = Markdown()
    out.table([f"measurement (median of {results['rounds']} rounds)", "p50 ms", "vs bare", "throughput"], rows)
    out("")
    out.table(["stage of one request, in-process app (median µs)", "µs"],
              [[stage, f"{value:.0f}"] for stage, value in m["breakdown"].items()])  # fmt: skip
    publish(out, "request-path.md", "request-path")
    _plot(m)


def _plot(m: dict) -> None:
    plt = pyplot()
    stages = {k: v for k, v in m["breakdown"].items() if k != "total"}
    fig, ax = plt.subplots(figsize=(9, 3.5))
    left = 0.0
    for name, value in stages.items():
        ax.barh([0], [value], left=left, label=name)
        left += value
    ax.set_yticks([])
    ax.set_xlabel("µs, one MiniLM request through the app (in-process, c=1)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    save(fig, RESULTS / "request_path.png", 120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    measure_parser = sub.add_parser("measure")
    measure_parser.add_argument("export", help="classification export folder")
    measure_parser.add_argument("--rounds", type=int, default=2)
    sub.add_parser("report", help="print the last results again")
    one = sub.add_parser("child", help="(a child process) one measurement")
    one.add_argument("kind", choices=["runtime", "breakdown", "raw"])
    one.add_argument("args", nargs="+")
    args = parser.parse_args()
    if args.command == "child":
        a = args.args
        functions = {"runtime": lambda: runtime_main(a[0], int(a[1]), int(a[2])),
                     "breakdown": lambda: breakdown_main(a[0], int(a[1])), "raw": lambda: raw_client_main(a[0], int(a[1]))}  # fmt: skip
        print(json.dumps(functions[args.kind]()))
    elif args.command == "report":
        report(json.loads((RESULTS / "request_path.json").read_text()))
    else:
        results = measure(Path(args.export), args.rounds)
        (RESULTS / "request_path.json").write_text(json.dumps(results, indent=1))
        report(results)


if __name__ == "__main__":
    main()
