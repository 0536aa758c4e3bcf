"""adamix-serve over real HTTP: a subprocess server on 127.0.0.1, tiny exported models, independent references
(the merged PyTorch model with the transformers tokenizer), every route and every error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from server_process import BIN, ServerProcess
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

CAP = 40  # the server's --max-new-tokens in these tests
TEXTS = ["the film was great", "awful plot and dull acting", "it was a movie", "superb story, really fine"]
PROMPTS = ["name[The Mill], food[Italian]", "name[Zizzi], food[French]", "name[Aromi], food[Indian]"]


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    # a 5 ms batch wait: tiny models answer so fast that requests would rarely overlap on their own
    options = ["--max-new-tokens", str(CAP), "--max-inputs", "8", "--max-body-bytes", "65536", "--threads", "1",
               "--max-batch-wait-ms", "5"]  # fmt: skip
    with ServerProcess(list(exports.values()), *options, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv


def post(server, path, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def reference_scores(folder: Path, inputs: list) -> np.ndarray:
    """Softmax of the merged PyTorch model (transformers tokenizer and model: nothing shared with the server)."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(folder / "merged").eval()
    rows = []
    for x in inputs:
        enc = tokenizer(*x, return_tensors="pt") if isinstance(x, list) else tokenizer(x, return_tensors="pt")
        with torch.no_grad():
            rows.append(torch.softmax(model(**enc).logits[0].double(), -1).numpy())
    return np.stack(rows)


def reference_greedy(folder: Path, prompt: str, steps: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    model = AutoModelForCausalLM.from_pretrained(folder / "merged").eval()
    ids = tokenizer(prompt + "\n", return_tensors="pt").input_ids  # the export's prompt template
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- routes --------------------------------------------------------------------------------------------------
def test_probes_and_model_cards_come_from_the_manifests(server, exports):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready["ready"] is True and set(ready["models"]) == set(exports)
    cards = {c["id"]: c for c in httpx.get(server.url + "/v1/models").json()["data"]}
    manifest = json.loads((exports["sentiment"] / "adamix_manifest.json").read_text())
    card = cards["sentiment"]
    assert card["task"] == "classification" and card["labels"] == ["negative", "positive"]
    assert card["parity"] == manifest["parity"] and card["merge_method"] == "average"
    assert card["method"] == "lora" and card["experts"] == 2 and card["providers"] == ["CPUExecutionProvider"]
    assert card["onnx_bytes"] == (exports["sentiment"] / "model.onnx").stat().st_size
    assert cards["restaurants"]["task"] == "generation"


def test_classify_equals_the_merged_pytorch_model(server, exports):
    inputs = [*TEXTS, ["the film was great", "it was a movie"]]
    response = post(server, "/v1/models/sentiment/classify", {"inputs": inputs})
    assert response.status_code == 200
    body = response.json()
    expected = reference_scores(exports["sentiment"], inputs)
    got = np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in body["results"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["label"] for r in body["results"]] == [["negative", "positive"][i] for i in expected.argmax(1)]
    assert body["usage"]["input_tokens"] > len(inputs)


@pytest.mark.parametrize("model", ["restaurants", "restaurants-gpt2"])
def test_greedy_generation_equals_transformers_generate(server, exports, model):
    for prompt in PROMPTS[:2]:
        body = post(server, f"/v1/models/{model}/generate", {"prompt": prompt, "max_new_tokens": 12}).json()
        out = body["outputs"][0]
        assert out["text"] == reference_greedy(exports[model], prompt, 12)
        assert out["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 12


def test_streaming_sends_the_same_text_piece_by_piece(server):
    request = {"prompt": PROMPTS[0], "max_new_tokens": 16, "temperature": 0.9, "top_k": 50, "seed": 7}
    whole = post(server, "/v1/models/restaurants/generate", request).json()["outputs"][0]
    response = post(server, "/v1/models/restaurants/generate", {**request, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["finish_reason"] == whole["finish_reason"] and final["usage"] == whole["usage"]
    assert "".join(e["text"] for e in events[:-1]) == whole["text"]
    assert len(events) > 3  # really streamed, not one piece


def test_seeded_sampling_repeats_and_differs_across_seeds(server):
    def sample(seed):
        request = {"prompt": PROMPTS, "max_new_tokens": 20, "temperature": 1.5, "top_p": 0.95, "seed": seed}
        return [o["text"] for o in post(server, "/v1/models/restaurants/generate", request).json()["outputs"]]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_stop_string_ends_generation_before_it(server):
    full = post(
        server, "/v1/models/restaurants-gpt2/generate", {"prompt": PROMPTS[1], "max_new_tokens": 20}
    ).json()
    text = full["outputs"][0]["text"]
    stop = text[5:7]
    assert stop, text
    out = post(
        server, "/v1/models/restaurants-gpt2/generate", {"prompt": PROMPTS[1], "max_new_tokens": 20, "stop": stop}
    ).json()["outputs"][0]
    assert out["text"] == text[: text.index(stop)] and out["finish_reason"] == "stop"
    streamed = sse_events(
        post(server, "/v1/models/restaurants-gpt2/generate",
             {"prompt": PROMPTS[1], "max_new_tokens": 20, "stop": [stop], "stream": True})
    )  # fmt: skip
    assert "".join(e["text"] for e in streamed[:-1]) == out["text"]  # no piece of the stop string leaked


def test_openai_client_completions_chat_and_streaming(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"sentiment", "restaurants", "restaurants-gpt2"}
    ours = post(
        server, "/v1/models/restaurants/generate", {"prompt": PROMPTS[0], "max_new_tokens": 10, "apply_template": False}
    ).json()["outputs"][0]["text"]  # fmt: skip
    completion = client.completions.create(model="restaurants", prompt=PROMPTS[0], max_tokens=10, temperature=0)
    assert completion.choices[0].text == ours and completion.usage.completion_tokens == 10
    chunks = list(
        client.completions.create(
            model="restaurants", prompt=PROMPTS[0], max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == ours
    # chat: the export's prompt template formats the user message, as in training
    templated = post(server, "/v1/models/restaurants/generate", {"prompt": PROMPTS[2], "max_new_tokens": 8}).json()
    chat = client.chat.completions.create(
        model="restaurants", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content == templated["outputs"][0]["text"]
    assert chat.usage.total_tokens == templated["usage"]["total_tokens"]
    stream = client.chat.completions.create(
        model="restaurants", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    with pytest.raises(Exception) as error:  # the client raises its NotFoundError with our message
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert getattr(error.value, "status_code", None) == 404 and "nope" in str(error.value)


def test_metrics_count_requests_batches_and_tokens(server):
    post(server, "/v1/models/sentiment/classify", {"inputs": TEXTS})
    post(server, "/v1/models/restaurants/generate", {"prompt": PROMPTS[0], "max_new_tokens": 5})
    text = httpx.get(server.url + "/metrics").text
    assert 'adamix_requests_total{model="sentiment",route="/v1/models/{name}/classify",status="200"}' in text
    assert 'adamix_request_seconds_bucket{le="+Inf",model="sentiment"' in text
    assert 'adamix_batch_size_count{model="sentiment"}' in text
    assert 'adamix_queue_depth{model="restaurants"} 0.0' in text
    tokens = [
        line for line in text.splitlines() if line.startswith('adamix_generated_tokens_total{model="restaurants"}')
    ]
    assert tokens and float(tokens[0].split()[-1]) >= 5
    assert "adamix_ready 1.0" in text


# -- bad input -----------------------------------------------------------------------------------------------
def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == status and body["error"]["message"]
    return body["error"]["message"]


def test_every_bad_input_is_a_json_4xx(server):
    url = server.url + "/v1/models/sentiment/classify"
    headers = {"content-type": "application/json"}
    assert "not valid JSON" in _error(httpx.post(url, content=b'{"inputs": [', headers=headers), 422)
    assert "inputs" in _error(post(server, "/v1/models/sentiment/classify", {"inputs": [3]}), 422)
    assert "inputs" in _error(post(server, "/v1/models/sentiment/classify", {"inputs": []}), 422)
    assert "Extra inputs" in _error(
        post(server, "/v1/models/sentiment/classify", {"inputs": ["a"], "trunc": 1}), 422
    )
    assert "at most 8" in _error(post(server, "/v1/models/sentiment/classify", {"inputs": ["a"] * 9}), 422)
    long_text = "good " * 200
    assert "truncate" in _error(post(server, "/v1/models/sentiment/classify", {"inputs": [long_text]}), 422)
    ok = post(server, "/v1/models/sentiment/classify", {"inputs": [long_text], "truncate": True})
    assert ok.status_code == 200 and ok.json()["usage"]["input_tokens"] == 64
    assert "limit" in _error(httpx.post(url, content=b"x" * 70000, headers=headers), 413)
    assert "nope" in _error(post(server, "/v1/models/nope/classify", {"inputs": ["a"]}), 404)
    gen = "/v1/models/restaurants/generate"
    assert f"at most {CAP}" in _error(post(server, gen, {"prompt": "a", "max_new_tokens": CAP + 1}), 422)
    assert "max_new_tokens" in _error(post(server, gen, {"prompt": "a", "max_new_tokens": 0}), 422)
    assert "one prompt" in _error(post(server, gen, {"prompt": ["a", "b"], "stream": True}), 422)
    limit = {c["id"]: c["max_tokens"] for c in httpx.get(server.url + "/v1/models").json()["data"]}["restaurants"]
    too_long = {"prompt": "food " * limit, "max_new_tokens": 10}
    assert f"{limit} in all" in _error(post(server, gen, too_long), 422)
    kept = post(server, gen, {**too_long, "truncate": True}).json()
    assert kept["usage"]["prompt_tokens"] == limit - 10
    assert "classification model" in _error(
        post(server, gen.replace("restaurants", "sentiment"), {"prompt": "a"}), 422
    )
    assert "temperature" in _error(post(server, gen, {"prompt": "a", "temperature": -1}), 422)
    assert "n" in _error(post(server, "/v1/completions", {"model": "restaurants", "prompt": "a", "n": 2}), 422)
    assert "Not Found" in _error(httpx.get(server.url + "/v2/anything"), 404)
    assert server.proc.poll() is None


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server, tmp_path):
    pytest.importorskip("schemathesis")
    result = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,"
         "status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", "40", "--seed", "1", "--workers", "1", "--request-timeout", "30",
         "--suppress-health-check", "all", "--mode", "all"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache folder stays out of the repository
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert server.proc.poll() is None


# -- load ----------------------------------------------------------------------------------------------------
async def _fire(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(body):
            async with semaphore:
                return await client.post(url, json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


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
    responses = asyncio.run(_fire(url, [{"inputs": [t]} for t in order], 64))
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
    steps_before = _metric(server, 'adamix_batch_size_count{model="restaurants"}')
    rows_before = _metric(server, 'adamix_batch_size_sum{model="restaurants"}')
    together = asyncio.run(_fire(url, bodies, 16))
    assert [r.json()["outputs"][0] for r in together] == single
    steps = _metric(server, 'adamix_batch_size_count{model="restaurants"}') - steps_before
    rows = _metric(server, 'adamix_batch_size_sum{model="restaurants"}') - rows_before
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


def _metric(server, prefix: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# -- separate servers: limits, keys, shutdown, bad folders ----------------------------------------------------
def test_full_queue_is_429_and_a_slow_answer_is_504(exports, tmp_path):
    # batches wait 3 s to fill, the timeout is 1 s and two requests may wait: deterministic 504s and 429s
    options = ["--max-batch-wait-ms", "3000", "--max-queue", "2", "--request-timeout", "1"]
    with ServerProcess([exports["sentiment"]], *options, log_dir=tmp_path) as srv:
        url = srv.url + "/v1/models/sentiment/classify"
        responses = asyncio.run(_fire(url, [{"inputs": [t]} for t in TEXTS], 4))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [429, 429, 504, 504], statuses
        for r in responses:
            assert r.json()["error"]["code"] == r.status_code
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
        time.sleep(2.5)  # the timed-out inputs are dropped, the server keeps answering
        assert httpx.get(srv.url + "/health").status_code == 200


def test_api_key_is_required_and_never_logged(exports, tmp_path):
    key = "sk-test-0123456789abcdef"
    (tmp_path / "keys").write_text(f"# one per line\n{key}\nsecond-key\n")
    with ServerProcess([exports["sentiment"]], "--api-key-file", tmp_path / "keys", log_dir=tmp_path) as srv:
        url = srv.url + "/v1/models/sentiment/classify"
        body = {"inputs": ["good"]}
        assert _error(httpx.post(url, json=body), 401)
        assert _error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert _error(httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}x"}), 401)
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.post(url, json=body, headers={"X-API-Key": "second-key"}).status_code == 200
        assert _error(httpx.get(srv.url + "/v1/models"), 401)
        assert httpx.get(srv.url + "/health").status_code == 200  # probes stay open
        assert httpx.get(srv.url + "/openapi.json").json()["components"]["securitySchemes"]
        assert key not in srv.log()
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    result = subprocess.run([str(BIN / "adamix-serve"), str(exports["sentiment"]), "--api-key-file", str(empty)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "holds no key" in result.stderr


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


def test_gpu_flag_falls_back_to_cpu_and_says_so(exports, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback path is not taken here")
    with ServerProcess([exports["sentiment"]], "--gpu", log_dir=tmp_path) as srv:
        card = httpx.get(srv.url + "/v1/models").json()["data"][0]
        assert card["providers"] == ["CPUExecutionProvider"]
        assert "--gpu asked, but this onnxruntime has no CUDA provider; using CPU" in srv.log()
        assert post(srv, "/v1/models/sentiment/classify", {"inputs": ["good"]}).status_code == 200


def test_broken_folders_are_refused_at_start_with_one_line(exports, tmp_path):
    import shutil

    def start(*args):
        return subprocess.run([str(BIN / "adamix-serve"), *map(str, args), "--port", "1"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    truncated = tmp_path / "truncated"
    shutil.copytree(exports["sentiment"], truncated)
    with open(truncated / "model.onnx", "r+b") as f:
        f.truncate(1000)
    no_manifest = tmp_path / "no-manifest"
    shutil.copytree(exports["sentiment"], no_manifest)
    (no_manifest / "adamix_manifest.json").unlink()
    bad_json = tmp_path / "bad-json"
    shutil.copytree(exports["sentiment"], bad_json)
    (bad_json / "adamix_manifest.json").write_text("{not json")
    cases = [
        ((truncated,), "model.onnx is 1000 bytes"),
        ((no_manifest,), "adamix_manifest.json is missing"),
        ((bad_json,), "not valid JSON"),
        ((tmp_path / "absent",), "not a folder"),
        ((exports["sentiment"], "--precision", "int8"), "no int8 ONNX model"),
        ((exports["sentiment"], exports["sentiment"]), "two folders are named"),
        ((), "at least one export folder"),
    ]
    for args, message in cases:
        result = start(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_server_never_imports_torch_or_transformers(exports):
    script = f"""
import sys, time
from fastapi.testclient import TestClient
import adamix_deploy.serving.cli
from adamix_deploy.serving.app import create_app
from adamix_deploy.serving.server import check_folders
from adamix_deploy.serving.runtime import ServerSettings
app = create_app(check_folders([{str(exports["sentiment"])!r}, {str(exports["restaurants"])!r}]), ServerSettings())
with TestClient(app) as client:
    while client.get("/ready").status_code != 200:
        time.sleep(0.05)
    assert client.post("/v1/models/sentiment/classify", json={{"inputs": ["good"]}}).status_code == 200
    assert client.post("/v1/models/restaurants/generate", json={{"prompt": "a", "max_new_tokens": 3}}).status_code == 200
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
