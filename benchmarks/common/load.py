"""What the servers are sent, and the one load generator that sends it.

Requests: SST-2 dev sentences (the first 64, or built-in ones where ../shared/data is absent), one per request,
as ``{"inputs": [text]}`` or as the Open Inference Protocol's BYTES tensor (`kserve_body`); E2E records for the
decoders.

`load` runs the generator in a process of its own (``python -m benchmarks.common.load``, the spec on stdin), so
that its client cost is the same for every server and apart from the benchmark's: asyncio + httpx, one
connection per concurrent client, ``warmup`` untimed requests first (connections, caches), then every request
timed on its own. It reports p50 / p99 latency per request, requests per second over the wall time of the
timed part, failures (any status but 200), and with ``count_tokens`` the completion tokens per second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

from benchmarks.common.paths import DATA, REPO

SST2_DEV = DATA / "glue" / "SST-2" / "dev.tsv"
WARMUP = 16  # untimed requests before the timed ones (fewer when there are fewer requests)
CONCURRENCY = (1, 8, 32)  # the serving benchmarks' concurrent clients ...
REQUESTS = {1: 300, 8: 800, 32: 1600}  # ... and their requests at each
E2E_PROMPTS = [
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside]",
    "name[Zizzi], eatType[pub], food[Italian], customer rating[5 out of 5], near[The Sorrento]",
    "name[Blue Spice], food[Chinese], priceRange[cheap], area[city centre], familyFriendly[yes]",
    "name[The Mill], eatType[restaurant], food[Indian], priceRange[high], near[Café Rouge]",
]


def sentences() -> list[str]:
    if SST2_DEV.exists():
        lines = SST2_DEV.read_text().splitlines()[1:65]
        return [line.split("\t")[0] for line in lines]
    return [f"an example sentence number {i} that is quite good" for i in range(64)]


def classify_body(text: str) -> dict:
    return {"inputs": [text]}


def kserve_body(text: str) -> dict:
    """One sentence as the Open Inference Protocol's BYTES tensor of shape [1, 1]: the same bytes for
    adamix-serve's /v2 routes (one process or Ray) and for Triton."""
    return {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}


def sentence_requests(url: str, count: int, body=classify_body) -> list[tuple[str, dict]]:
    """``count`` requests to ``url``, one sentence each, cycling through `sentences`."""
    texts = sentences()
    return [(url, body(texts[i % len(texts)])) for i in range(count)]


def load(
    requests: list[tuple[str, dict]], concurrency: int, warmup: int = WARMUP, count_tokens: bool = False
) -> dict:
    """Send ``requests`` (url, JSON body) from ``concurrency`` clients in a fresh process; return its figures."""
    spec = {"requests": requests, "concurrency": concurrency, "warmup": warmup, "count_tokens": count_tokens}
    out = subprocess.run([sys.executable, "-m", "benchmarks.common.load"], input=json.dumps(spec),
                         capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    return json.loads(out.stdout)


def _generate(spec: dict) -> dict:
    import httpx

    requests, concurrency, count_tokens = spec["requests"], spec["concurrency"], spec["count_tokens"]
    warmup = min(spec["warmup"], len(requests))

    async def run() -> tuple[list[float], float, int, int]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        latencies: list[float] = []
        failures = tokens = 0
        queue = list(reversed(requests))
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            for url, body in requests[:warmup]:  # not timed
                await client.post(url, json=body)

            async def worker():
                nonlocal failures, tokens
                while queue:
                    url, body = queue.pop()
                    start = time.perf_counter()
                    response = await client.post(url, json=body)
                    latencies.append(time.perf_counter() - start)
                    failures += response.status_code != 200
                    if count_tokens and response.status_code == 200:
                        tokens += response.json()["usage"]["completion_tokens"]

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, time.perf_counter() - start, failures, tokens

    latencies, wall, failures, tokens = asyncio.run(run())
    latencies.sort()
    result = {
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "requests_per_s": round(len(requests) / wall, 1),
        "requests": len(requests), "failures": failures, "warmup": warmup,
    }  # fmt: skip
    if count_tokens:
        result["tokens_per_s"] = round(tokens / wall, 1)
    return result


def load_columns() -> list[str]:
    """The table columns of a row measured at every CONCURRENCY (``row["c1"]``, ...)."""
    return [f"c={c} {what}" for c in CONCURRENCY for what in ("p50 / p99 ms", "req/s")]


def load_cells(row: dict) -> list:
    return [cell for c in CONCURRENCY for cell in (f"{row[f'c{c}']['p50_ms']} / {row[f'c{c}']['p99_ms']}",
                                                   row[f"c{c}"]["requests_per_s"])]  # fmt: skip


def generation_tokens_per_s(url: str, prompts: list[str], body: dict) -> tuple[float, float]:
    """Completion tokens per second through a /generate route, in this process: the ``prompts`` one at a time
    (after one warm-up request), then all sent at once (the engine's continuous batching)."""
    import httpx

    httpx.post(url, json={**body, "prompt": prompts[0]}, timeout=300)  # warm-up
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        tokens += httpx.post(url, json={**body, "prompt": prompt}, timeout=300).json()["usage"][
            "completion_tokens"
        ]
    sequential = tokens / (time.perf_counter() - start)

    async def together() -> int:
        async with httpx.AsyncClient(timeout=300) as client:
            answers = await asyncio.gather(*(client.post(url, json={**body, "prompt": p}) for p in prompts))
        return sum(a.json()["usage"]["completion_tokens"] for a in answers)

    start = time.perf_counter()
    concurrent = asyncio.run(together()) / (time.perf_counter() - start)
    return sequential, concurrent


if __name__ == "__main__":
    print(json.dumps(_generate(json.loads(sys.stdin.read()))))
