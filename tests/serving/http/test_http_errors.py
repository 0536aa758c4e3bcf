"""Bad input over HTTP: every kind is a JSON 4xx, and schemathesis finds no 5xx and no schema mismatch."""

from __future__ import annotations

import httpx
import pytest

from helpers.cli import run
from helpers.http import (
    CAP,
    error_message,
    post,
)

pytestmark = pytest.mark.integration


def test_every_bad_input_is_a_json_4xx(server):
    url = server.url + "/v1/models/sentiment/classify"
    headers = {"content-type": "application/json"}
    assert "not valid JSON" in error_message(httpx.post(url, content=b'{"inputs": [', headers=headers), 422)
    assert "inputs" in error_message(post(server, "/v1/models/sentiment/classify", {"inputs": [3]}), 422)
    assert "inputs" in error_message(post(server, "/v1/models/sentiment/classify", {"inputs": []}), 422)
    assert "Extra inputs" in error_message(
        post(server, "/v1/models/sentiment/classify", {"inputs": ["a"], "trunc": 1}), 422
    )
    assert "at most 8" in error_message(post(server, "/v1/models/sentiment/classify", {"inputs": ["a"] * 9}), 422)
    long_text = "good " * 200
    assert "truncate" in error_message(post(server, "/v1/models/sentiment/classify", {"inputs": [long_text]}), 422)
    ok = post(server, "/v1/models/sentiment/classify", {"inputs": [long_text], "truncate": True})
    assert ok.status_code == 200 and ok.json()["usage"]["input_tokens"] == 64
    assert "limit" in error_message(httpx.post(url, content=b"x" * 70000, headers=headers), 413)
    assert "nope" in error_message(post(server, "/v1/models/nope/classify", {"inputs": ["a"]}), 404)
    gen = "/v1/models/restaurants/generate"
    assert f"at most {CAP}" in error_message(post(server, gen, {"prompt": "a", "max_new_tokens": CAP + 1}), 422)
    assert "max_new_tokens" in error_message(post(server, gen, {"prompt": "a", "max_new_tokens": 0}), 422)
    assert "one prompt" in error_message(post(server, gen, {"prompt": ["a", "b"], "stream": True}), 422)
    limit = {c["id"]: c["max_tokens"] for c in httpx.get(server.url + "/v1/models").json()["data"]}["restaurants"]
    too_long = {"prompt": "food " * limit, "max_new_tokens": 10}
    assert f"{limit} in all" in error_message(post(server, gen, too_long), 422)
    kept = post(server, gen, {**too_long, "truncate": True}).json()
    assert kept["usage"]["prompt_tokens"] == limit - 10
    assert "classification model" in error_message(
        post(server, gen.replace("restaurants", "sentiment"), {"prompt": "a"}), 422
    )
    assert "temperature" in error_message(post(server, gen, {"prompt": "a", "temperature": -1}), 422)
    assert "n" in error_message(
        post(server, "/v1/completions", {"model": "restaurants", "prompt": "a", "n": 2}), 422
    )
    assert "Not Found" in error_message(httpx.get(server.url + "/v2x/anything"), 404)  # /v2 itself: the v2 shape
    assert server.proc.poll() is None


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server, tmp_path):
    pytest.importorskip("schemathesis")
    result = run(
        "schemathesis", "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,"
        "status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples", "40", "--seed", "1", "--workers", "1", "--request-timeout", "30",
        "--suppress-health-check", "all", "--mode", "all",
        check=False, cwd=tmp_path,  # its cache folder stays out of the repository
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert server.proc.poll() is None
