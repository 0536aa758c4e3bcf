"""adamix-serve's native routes over real HTTP (a subprocess server on tiny exported models): model cards, classify
and generate against independent references, streaming, seeded sampling, stop strings, metrics."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from helpers.http import (
    PROMPTS,
    TEXTS,
    post,
    reference_greedy,
    reference_scores,
    sse_events,
)

pytestmark = pytest.mark.integration


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
