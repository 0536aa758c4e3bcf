"""Under load: 2,000 concurrent requests each get their own answer, generation batches without changing results,
classification never waits behind generation, a full queue is 429 and a slow answer 504, SIGTERM drains."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from adamix_deploy.testing.processes import ServerProcess

from helpers.http import (
    PROMPTS,
    TEXTS,
    fire,
    metric,
    post,
)

pytestmark = pytest.mark.integration


def test_2000_concurrent_requests_each_get_exactly_their_own_answer(server):
    rng = np.random.default_rng(0)
    words = "the film was plot acting really good bad great awful dull superb fine boring story".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 30))) + f" {i}" for i in range(200)]
    url = server.url + "/v1/models/sentiment/classify"
    single = {
        t: post(server, "/v1/models/sentiment/classify", {"inputs": [t]}).json()["results"][0] for t in texts
    }
    order = [texts[i] for i in rng.integers(0, len(texts), 2000)]
    start = time.perf_counter()
    responses = asyncio.run(fire(url, [{"inputs": [t]} for t in order], 64))
    elapsed = time.perf_counter() - start
    assert [r.status_code for r in responses].count(200) == 2000
    for text, response in zip(order, responses, strict=True):
        (got,) = response.json()["results"]
        assert got["label"] == single[text]["label"]
        for label in ("negative", "positive"):
            assert abs(got["scores"][label] - single[text]["scores"][label]) < 1e-5
    metrics = httpx.get(server.url + "/metrics").text
    batches = [
        line for line in metrics.splitlines() if line.startswith('adamix_batch_size_count{model="sentiment"}')
    ]
    rows = [line for line in metrics.splitlines() if line.startswith('adamix_batch_size_sum{model="sentiment"}')]
    assert float(rows[0].split()[-1]) / float(batches[0].split()[-1]) > 1.5, "requests were not batched"
    print(f"2000 requests at concurrency 64: {elapsed:.1f} s")


def test_concurrent_generation_is_batched_and_equals_single_requests(server):
    bodies = [
        {"prompt": PROMPTS[i % 3] + f" #{i}", "max_new_tokens": 6 + i % 9, "temperature": 0.0 if i % 2 else 1.0, "seed": i}
        for i in range(48)
    ]  # fmt: skip
    url = server.url + "/v1/models/restaurants/generate"
    single = [post(server, "/v1/models/restaurants/generate", b).json()["outputs"][0] for b in bodies]
    steps_before = metric(server, 'adamix_batch_size_count{model="restaurants"}')
    rows_before = metric(server, 'adamix_batch_size_sum{model="restaurants"}')
    together = asyncio.run(fire(url, bodies, 16))
    assert [r.json()["outputs"][0] for r in together] == single
    steps = metric(server, 'adamix_batch_size_count{model="restaurants"}') - steps_before
    rows = metric(server, 'adamix_batch_size_sum{model="restaurants"}') - rows_before
    assert rows / steps > 1.5, "generation requests were not decoded together"


def test_classification_never_waits_behind_generation(exports, tmp_path):
    # one generation row at a time and a long queue of generations: classification must still answer at once
    options = ["--max-generation-batch", "1", "--max-new-tokens", "60"]
    with ServerProcess([exports["sentiment"], exports["restaurants-gpt2"]], *options, log_dir=tmp_path) as srv:

        async def scenario():
            async with httpx.AsyncClient(timeout=120) as client:
                start = time.perf_counter()

                async def generate(i):
                    body = {"prompt": PROMPTS[i % 3], "max_new_tokens": 60, "temperature": 1.0, "seed": i}
                    await client.post(
                        srv.url + "/v1/models/restaurants-gpt2/generate", json={**body, "stop": "\x00"}
                    )
                    return time.perf_counter() - start

                generations = [asyncio.ensure_future(generate(i)) for i in range(48)]
                await asyncio.sleep(0.05)  # the generations are queued first
                response = await client.post(srv.url + "/v1/models/sentiment/classify", json={"inputs": TEXTS})
                classified = time.perf_counter() - start
                done = await asyncio.gather(*generations)
                return response, classified, sorted(done)

        response, classified, done = asyncio.run(scenario())
        assert response.status_code == 200
        assert done[-1] > 0.3, "generation too quick to tell anything"
        # answered long before the generation queue drained
        assert classified < done[len(done) // 2], (classified, done)


def test_full_queue_is_429_and_a_slow_answer_is_504(exports, tmp_path):
    # batches wait 3 s to fill, the timeout is 1 s and two requests may wait: deterministic 504s and 429s
    options = ["--max-batch-wait-ms", "3000", "--max-queue", "2", "--request-timeout", "1"]
    with ServerProcess([exports["sentiment"]], *options, log_dir=tmp_path) as srv:
        url = srv.url + "/v1/models/sentiment/classify"
        responses = asyncio.run(fire(url, [{"inputs": [t]} for t in TEXTS], 4))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [429, 429, 504, 504], statuses
        for r in responses:
            assert r.json()["error"]["code"] == r.status_code
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
        time.sleep(2.5)  # the timed-out inputs are dropped, the server keeps answering
        assert httpx.get(srv.url + "/health").status_code == 200


def test_sigterm_finishes_every_accepted_request_then_exits_0(exports, tmp_path):
    # classification batches wait 2 s to fill, so the requests are surely in flight when the signal comes
    options = ["--max-batch-wait-ms", "2000", "--max-batch-size", "64", "--max-generation-batch", "2"]
    with ServerProcess([exports["sentiment"], exports["restaurants"]], *options, log_dir=tmp_path) as srv:

        async def scenario():
            gen = [
                {"prompt": PROMPTS[i % 3], "max_new_tokens": 30, "temperature": 1.0, "seed": i} for i in range(24)
            ]
            cls = [{"inputs": [TEXTS[i % 4]]} for i in range(40)]
            async with httpx.AsyncClient(timeout=60) as client:
                tasks = [
                    asyncio.ensure_future(client.post(srv.url + "/v1/models/restaurants/generate", json=b))
                    for b in gen
                ]
                tasks += [
                    asyncio.ensure_future(client.post(srv.url + "/v1/models/sentiment/classify", json=b))
                    for b in cls
                ]
                in_flight = 0
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    metrics = (await client.get(srv.url + "/metrics")).text
                    in_flight = float(metrics.split("\nadamix_requests_in_flight ")[1].split()[0]) - 1
                    if in_flight >= len(cls):
                        break
                assert in_flight >= len(cls), in_flight
                srv.terminate()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert all(r.json()["outputs"][0]["usage"]["completion_tokens"] >= 1 for r in responses[:24])
        assert all(r.json()["results"][0]["label"] for r in responses[24:])
        assert srv.proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):  # and nothing new is accepted
            httpx.get(srv.url + "/health")
