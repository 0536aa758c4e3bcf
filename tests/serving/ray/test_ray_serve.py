"""``adamix-serve --ray``: the same export folders as a Ray Serve application with 2 replicas, on a real local Ray
instance started by the real command in a subprocess (as a user would run it), compared with the single-process
server (conftest's `server`, same folders and options): the same answers, errors and limits on every API, the
`openai` client included. Then a replica's process is killed with SIGKILL under steady load: what the clients
saw (errors, their statuses, for how long), when Ray's replacement answered, and that no request hung past the
request timeout. The figures are printed and written to tests/artifacts/ray_kill9.json."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adamix_deploy.testing.processes import ServerProcess, free_port, process_tree

from helpers import ARTIFACTS
from helpers.cli import run
from helpers.http import PROMPTS, SERVER_OPTIONS, TEXTS, sse_events

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'adamix-deploy[ray]'")

from adamix_deploy.serving.ray.deployment import REPLICA_HEADER  # noqa: E402  (needs ray)
from adamix_deploy.serving.ray.options import PROXY_TIMEOUT_MARGIN_S  # noqa: E402

pytestmark = pytest.mark.integration

REPLICAS = 2
REQUEST_TIMEOUT_S = 10.0
CONCURRENCY = 8  # steady load: 8 clients, each sending its next request as soon as the last is answered
STEADY_S = 4.0  # load on both replicas before the kill
AFTER_BACK_S = 5.0  # load after the replacement first answers
RECOVERY_LIMIT_S = 120.0  # on 2 busy cores a new replica process takes seconds to start and load its models
ERROR_WINDOW_LIMIT_S = 10.0  # every failed request must end within this long after the kill


@pytest.fixture(scope="module")
def ray_server(exports, tmp_path_factory):
    """`adamix-serve --ray --replicas 2` over the same folders and options as conftest's `server`."""
    options = [*SERVER_OPTIONS, "--ray", "--replicas", str(REPLICAS), "--request-timeout", str(REQUEST_TIMEOUT_S)]
    log_dir = tmp_path_factory.mktemp("ray-logs")
    with ServerProcess(list(exports.values()), *options, log_dir=log_dir, ready_timeout=300) as srv:
        # /ready answers once one replica is up; the command logs this line once all of them are
        deadline = time.monotonic() + 120
        while "(Ray Serve, " not in srv.log():
            assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log()[-5000:]
            time.sleep(0.2)
        yield srv
    assert srv.proc.returncode == 0, srv.log()[-5000:]  # SIGTERM: the application deleted, Ray shut down


def replica_pids(root: int) -> set[int]:
    """The processes of this server's replicas: descendants of the command (its local Ray instance) named by Ray
    ``ray::ServeReplica:adamix:...``."""
    found = set()
    for pid in process_tree(root)[1:]:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica:adamix:"):
                found.add(pid)
        except OSError:
            pass
    return found


# -- the same API ------------------------------------------------------------------------------------------------


def without_volatile(body):
    """A JSON answer without what differs between any two calls (ids, creation times)."""
    if isinstance(body, dict):
        return {k: without_volatile(v) for k, v in body.items() if k not in ("id", "created")}
    if isinstance(body, list):
        return [without_volatile(v) for v in body]
    return body


def close(a, b, tolerance: float = 1e-6) -> bool:
    """Equal JSON, floats within ``tolerance`` (a batch's padding may differ, so scores may move in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tolerance
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    return a == b


CASES = [
    ("GET", "/v1/models", None),
    ("GET", "/ready", None),
    ("GET", "/v2/models/sentiment", None),
    ("POST", "/v1/models/sentiment/classify", {"inputs": [*TEXTS, ["A man plays.", "Someone plays."]]}),
    ("POST", "/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]}),
    ("POST", "/v1/models/restaurants/generate", {"prompt": PROMPTS[0], "max_new_tokens": 12}),
    ("POST", "/v1/models/restaurants/generate", {"prompt": PROMPTS[1], "max_new_tokens": 6, "stream": True}),
    ("POST", "/v1/completions", {"model": "restaurants-gpt2", "prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0}),
    ("POST", "/v1/chat/completions", {"model": "restaurants", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": PROMPTS[0]}]}),
    # errors: unknown model, too many inputs, over the token limit, wrong task, malformed JSON, over the body limit
    ("POST", "/v1/models/nope/classify", {"inputs": ["x"]}),
    ("POST", "/v1/models/sentiment/classify", {"inputs": ["good"] * 9}),
    ("POST", "/v1/models/sentiment/classify", {"inputs": ["good " * 80]}),
    ("POST", "/v1/models/sentiment/generate", {"prompt": "a"}),
    ("POST", "/v1/models/sentiment/classify", b'{"inputs": ["x"'),
    ("POST", "/v1/models/sentiment/classify", {"inputs": ["x" * 70000]}),
    ("POST", "/v2/models/restaurants/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}),
]  # fmt: skip


def call(url: str, method: str, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.request(
            method, url + path, content=body, headers={"content-type": "application/json"}, timeout=60
        )
    return httpx.request(method, url + path, json=body, timeout=60)


@pytest.mark.parametrize(
    ("method", "path", "body"), CASES, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(CASES)]
)
def test_ray_answers_as_the_single_process_server(ray_server, server, method, path, body):
    ours, theirs = call(ray_server.url, method, path, body), call(server.url, method, path, body)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    assert REPLICA_HEADER in ours.headers and REPLICA_HEADER not in theirs.headers
    if ours.headers["content-type"].startswith("text/event-stream"):
        assert sse_events(ours) == sse_events(theirs)
    else:
        assert close(without_volatile(ours.json()), without_volatile(theirs.json())), (ours.text, theirs.text)


def test_the_openapi_schema_and_the_openai_client_are_unchanged(ray_server, server):
    from openai import OpenAI

    assert httpx.get(ray_server.url + "/openapi.json").json() == httpx.get(server.url + "/openapi.json").json()
    answers = []
    for url in (ray_server.url, server.url):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        chat = client.chat.completions.create(
            model="restaurants", max_tokens=10, temperature=0, messages=[{"role": "user", "content": PROMPTS[1]}]
        )
        stream = client.completions.create(
            model="restaurants", prompt=PROMPTS[2], max_tokens=10, temperature=0, stream=True
        )
        answers.append((chat.choices[0].message.content, "".join(c.choices[0].text for c in stream if c.choices)))
    assert answers[0] == answers[1]


def test_adapters_cannot_be_loaded_or_unloaded_at_run_time_under_ray(ray_server):
    for answer in (httpx.post(ray_server.url + "/v1/adapters", json={"path": "/nowhere"}),
                   httpx.delete(ray_server.url + "/v1/adapters/sentiment")):  # fmt: skip
        assert answer.status_code == 422 and "under Ray Serve" in answer.json()["error"]["message"], answer.text


def test_both_replicas_serve_and_batch(ray_server):
    assert len(replica_pids(ray_server.proc.pid)) == REPLICAS

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(client.post(ray_server.url + "/v1/models/sentiment/classify", json={"inputs": [t]}) for t in TEXTS * 16)
            )  # fmt: skip

    responses = asyncio.run(many())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.headers[REPLICA_HEADER] for r in responses}) == REPLICAS
    # each replica's @serve.batch ran several inputs per batch (its own /metrics: whichever replica answers)
    batches: dict[str, tuple[float, float]] = {}
    while len(batches) < REPLICAS:
        answer = httpx.get(ray_server.url + "/metrics", timeout=30)
        values = {line.split()[0]: float(line.split()[1]) for line in answer.text.splitlines() if line[:1] != "#"}
        name = '{model="sentiment"}'
        batches[answer.headers[REPLICA_HEADER]] = (
            values[f"adamix_batch_size_sum{name}"],
            values[f"adamix_batch_size_count{name}"],
        )
    assert all(inputs > runs > 0 for inputs, runs in batches.values()), batches


# -- kill -9 under load ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    start: float
    end: float
    status: int | str  # the HTTP status, or the client's exception name when no answer came
    replica: str | None
    detail: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200


async def kill_a_replica_under_load(server: ServerProcess) -> tuple[list[Outcome], dict]:
    """Steady load on both replicas, SIGKILL to one replica's process, load until Ray's replacement answers and
    a little after. Returns every request's outcome and the times of the kill and the recovery."""
    url = server.url + "/v1/models/sentiment/classify"
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    # the client waits well past the server's limits, so a request that hangs shows as one, not as a client error
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S + 60, limits=limits) as client:

        async def one_client(index: int) -> None:
            i = index
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = await client.post(url, json={"inputs": [TEXTS[i % len(TEXTS)]]})
                    detail = None if r.status_code == 200 else r.text[:300]
                    outcome = Outcome(
                        started, time.monotonic(), r.status_code, r.headers.get(REPLICA_HEADER), detail
                    )
                except httpx.HTTPError as e:
                    outcome = Outcome(started, time.monotonic(), type(e).__name__, None, str(e)[:300])
                outcomes.append(outcome)
                i += CONCURRENCY

        async def until(condition, limit: float, what: str) -> float:
            deadline = time.monotonic() + limit
            while not condition():
                assert time.monotonic() < deadline, f"{what} did not happen within {limit} s"
                await asyncio.sleep(0.05)
            return time.monotonic()

        clients = [asyncio.create_task(one_client(i)) for i in range(CONCURRENCY)]
        try:
            await until(
                lambda: len({o.replica for o in outcomes if not o.failed}) == REPLICAS,
                60,
                "both replicas answering",
            )
            await asyncio.sleep(STEADY_S)
            before_pids = replica_pids(server.proc.pid)
            before_replicas = {o.replica for o in outcomes if not o.failed}
            victim = min(before_pids)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            times = {"killed_at": killed_at, "victim_pid": victim}

            def new_process() -> bool:
                return bool(replica_pids(server.proc.pid) - before_pids)

            def new_replica_answered() -> bool:
                return any(o.replica not in before_replicas for o in outcomes if not o.failed)

            times["new_process_at"] = await until(new_process, RECOVERY_LIMIT_S, "a new replica process")
            times["back_at"] = await until(
                new_replica_answered, RECOVERY_LIMIT_S, "an answer from the new replica"
            )
            await asyncio.sleep(AFTER_BACK_S)
        finally:
            stop.set()
            await asyncio.gather(*clients)
    times["replicas_after"] = len(replica_pids(server.proc.pid))
    return outcomes, times


def summarise(outcomes: list[Outcome], times: dict) -> dict:
    killed_at, back_at = times["killed_at"], times["back_at"]
    failed = [o for o in outcomes if o.failed]
    latency = [o.end - o.start for o in outcomes]

    def rate(start: float, end: float) -> float:
        done = [o for o in outcomes if start <= o.end < end and not o.failed]
        return round(len(done) / (end - start), 1) if end > start else 0.0

    def p50_ms(selected: list[Outcome]) -> float | None:
        return round(1000 * statistics.median(o.end - o.start for o in selected), 1) if selected else None

    return {
        "replicas": REPLICAS,
        "concurrency": CONCURRENCY,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "requests": len(outcomes),
        "errors": len(failed),
        "error_statuses": dict(Counter(str(o.status) for o in failed)),
        "first_error_after_kill_s": round(min(o.end for o in failed) - killed_at, 3) if failed else None,
        "last_error_after_kill_s": round(max(o.end for o in failed) - killed_at, 3) if failed else None,
        "error_example": failed[0].detail if failed else None,
        "new_replica_process_after_s": round(times["new_process_at"] - killed_at, 2),
        "new_replica_answering_after_s": round(back_at - killed_at, 2),
        "answered_between_kill_and_recovery": sum(1 for o in outcomes if killed_at <= o.end < back_at and not o.failed),
        "requests_per_s_before": rate(killed_at - STEADY_S, killed_at),
        "requests_per_s_one_replica": rate(killed_at + 1, back_at),
        "requests_per_s_after": rate(back_at, back_at + AFTER_BACK_S),
        "p50_ms_before": p50_ms([o for o in outcomes if o.end < killed_at]),
        "p50_ms_after_recovery": p50_ms([o for o in outcomes if o.start > back_at]),
        "max_latency_s": round(max(latency), 3),
        "max_failed_latency_s": round(max(o.end - o.start for o in failed), 3) if failed else None,
        "replica_processes_after": times["replicas_after"],
    }  # fmt: skip


def test_a_replica_killed_under_load_is_replaced_and_no_request_hangs(ray_server):
    outcomes, times = asyncio.run(kill_a_replica_under_load(ray_server))
    figures = summarise(outcomes, times)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ray_kill9.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nkill -9 of one of {REPLICAS} Ray Serve replicas under load: {json.dumps(figures)}")

    # no request hung: every answer, failures included, came within the request timeout (+ Ray proxy's margin)
    assert figures["max_latency_s"] <= REQUEST_TIMEOUT_S + PROXY_TIMEOUT_MARGIN_S, figures
    # the failures are the kill's: all of them ended within a bounded window after it, none after
    failed = [o for o in outcomes if o.failed]
    assert all(times["killed_at"] <= o.end <= times["killed_at"] + ERROR_WINDOW_LIMIT_S for o in failed), figures
    # the surviving replica kept answering while the new one started, and Ray brought the count back
    assert figures["answered_between_kill_and_recovery"] > 0, figures
    assert figures["replica_processes_after"] == REPLICAS, figures
    assert all(not o.failed for o in outcomes if o.start > times["back_at"]), figures


# -- the command -------------------------------------------------------------------------------------------------


def test_ray_options_and_broken_folders_are_refused_in_one_line(exports, tmp_path):
    def start(*args: str) -> subprocess.CompletedProcess:
        return run("adamix-serve", *args, check=False, debug=False, timeout=120)

    cases = [
        ((exports["sentiment"], "--replicas", "2"), "--replicas only apply with --ray"),
        ((exports["sentiment"], "--ray", "--replicas", "2", "--max-replicas", "3"), "give either --replicas"),
        (
            (exports["sentiment"], "--ray", "--min-replicas", "3", "--max-replicas", "2"),
            "is more than --max-replicas",
        ),
        ((exports["sentiment"], "--ray", "--target-ongoing-requests", "4"), "applies with --min-replicas"),
        ((tmp_path / "absent", "--ray"), "not a folder"),  # checked before Ray starts
        (
            (exports["sentiment"], "--ray", "--ray-address", f"127.0.0.1:{free_port()}"),
            "cannot reach the Ray cluster",
        ),
    ]
    for args, message in cases:
        result = start(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
