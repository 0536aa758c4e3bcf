"""The KServe v2 / Open Inference Protocol routes over real HTTP, driven by the official `tritonclient` (JSON and
binary tensors) and by plain httpx for the exact JSON shapes: health, metadata, inference equal to
``/v1/models/{name}/classify``, output selection, pairs, and errors in the protocol's ``{"error": "..."}``."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest

from adamix_deploy.testing.processes import ServerProcess

from helpers.http import TEXTS, post

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.integration

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def client(server):
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield triton
    triton.close()


def text_input(texts: list[str], binary: bool, name: str = "text"):
    tensor = httpclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return tensor


def native(server, inputs: list) -> tuple[list[str], np.ndarray]:
    results = post(server, "/v1/models/sentiment/classify", {"inputs": inputs}).json()["results"]
    return [r["label"] for r in results], np.array([[r["scores"][label] for label in LABELS] for r in results])


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_and_metadata_through_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment") and client.is_model_ready("restaurants")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "adamix-serve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("sentiment")
    assert meta["name"] == "sentiment" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "text_pair", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert json.loads(meta["parameters"]["labels"]) == LABELS and meta["parameters"]["task"] == "classification"
    generation = client.get_model_metadata("restaurants")
    assert generation["inputs"] == [] and "/v1/completions" in generation["parameters"]["routes"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_equals_native_classify(server, client, binary):
    labels, scores = native(server, TEXTS)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "scores")]
    result = client.infer("sentiment", [text_input(TEXTS, binary)], outputs=outputs, request_id="req-7")
    assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == labels
    got = result.as_numpy("scores")
    assert got.shape == (len(TEXTS), 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, scores, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "sentiment"


def test_infer_without_outputs_returns_all_of_them(server, client):
    # tritonclient then asks for binary outputs (binary_data_output): the extension's default path
    labels, scores = native(server, TEXTS[:2])
    result = client.infer("sentiment", [text_input(TEXTS[:2], True)])
    assert [x.decode() for x in result.as_numpy("label")] == labels
    np.testing.assert_allclose(result.as_numpy("scores"), scores, atol=1e-6)


def test_requested_outputs_subset(client):
    outputs = [httpclient.InferRequestedOutput("scores", binary_data=False)]
    result = client.infer("sentiment", [text_input(TEXTS, False)], outputs=outputs)
    assert result.as_numpy("label") is None and result.as_numpy("scores").shape == (len(TEXTS), 2)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_pairs_equal_native_pairs(server, client, binary):
    firsts, seconds = ["the film was great", "a dull plot"], ["it was a movie", "superb story"]
    labels, scores = native(server, [[a, b] for a, b in zip(firsts, seconds, strict=True)])
    inputs = [text_input(firsts, binary), text_input(seconds, binary, "text_pair")]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("label", "scores")]
    result = client.infer("sentiment", inputs, outputs=outputs)
    assert list(result.as_numpy("label")) == labels
    np.testing.assert_allclose(result.as_numpy("scores"), scores, atol=1e-6)


def test_errors_reach_tritonclient_as_readable_messages(client):
    unknown = failure(lambda: client.infer("nope", [text_input(["a"], False)]))
    assert unknown.status() == "404" and "nope" in unknown.message()
    assert failure(lambda: client.get_model_metadata("nope")).status() == "404"
    wrong_type = httpclient.InferInput("text", [1], "FP32")
    wrong_type.set_data_from_numpy(np.array([1.0], dtype=np.float32), binary_data=False)
    error = failure(lambda: client.infer("sentiment", [wrong_type]))
    assert error.status() == "422" and "BYTES" in error.message()
    wrong_shape = httpclient.InferInput("text", [2, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([["a", "b"], ["c", "d"]], dtype=np.object_), binary_data=False)
    error = failure(lambda: client.infer("sentiment", [wrong_shape]))
    assert error.status() == "422" and "[N]" in error.message()
    error = failure(lambda: client.infer("sentiment", [text_input(["good"] * 9, True)]))  # --max-inputs 8
    assert error.status() == "422" and "at most 8" in error.message()
    error = failure(lambda: client.infer("restaurants", [text_input(["name[Zizzi]"], False)]))
    assert error.status() == "422" and "/v1/models/restaurants/generate" in error.message()
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=False)]
    error = failure(lambda: client.infer("sentiment", [text_input(["a"], False)], outputs=outputs))
    assert error.status() == "422" and "label, scores" in error.message()
    # str() works too: tritonclient builds it from a string message, which the project's own shape is not
    assert str(error).startswith("[422] unknown output")


def test_json_shapes(server):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(server.url + "/v2/models/sentiment/ready").json() == {"name": "sentiment", "ready": True}
    request = {
        "id": "42",
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["great"], ["dull"]]}],
        "outputs": [{"name": "label"}, {"name": "scores"}],
    }
    response = post(server, "/v2/models/sentiment/infer", request)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"model_name", "id", "outputs"} and body["id"] == "42"
    label, scores = body["outputs"]
    assert label == {
        "name": "label",
        "shape": [2],
        "datatype": "BYTES",
        "data": native(server, ["great", "dull"])[0],
    }
    assert scores["shape"] == [2, 2] and scores["datatype"] == "FP32" and len(scores["data"]) == 4  # flat
    flat = post(
        server, "/v2/models/sentiment/infer", {"inputs": [{**request["inputs"][0], "data": ["great", "dull"]}]}
    )
    assert flat.json()["outputs"] == body["outputs"] and "id" not in flat.json()


def test_binary_request_and_response_by_hand(server):
    texts = [t.encode() for t in TEXTS[:2]]
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    tensor = {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps(
        {"inputs": [tensor], "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}
    ).encode()
    response = httpx.post(
        server.url + "/v2/models/sentiment/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:size])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 16}
    scores = np.frombuffer(response.content[size:], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(scores, native(server, TEXTS[:2])[1], atol=1e-6)


def kserve_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_errors_on_v2_routes_have_the_protocol_shape(server):
    infer = "/v2/models/sentiment/infer"
    assert "nope" in kserve_error(httpx.get(server.url + "/v2/models/nope"), 404)
    assert "nope" in kserve_error(httpx.get(server.url + "/v2/models/nope/ready"), 404)
    assert "inputs" in kserve_error(post(server, infer, {"outputs": []}), 422)
    assert "Extra inputs" in kserve_error(post(server, infer, {"inputs": [], "extra": 1}), 422)
    assert "no 'text' input" in kserve_error(post(server, infer, {"inputs": []}), 422)
    bytes_input = {"name": "text", "shape": [2], "datatype": "BYTES"}
    assert "needs 2" in kserve_error(post(server, infer, {"inputs": [{**bytes_input, "data": ["a"]}]}), 422)
    assert "not a string" in kserve_error(
        post(server, infer, {"inputs": [{**bytes_input, "data": ["a", 3]}]}), 422
    )
    nested = {**bytes_input, "data": [["a", "b"]]}  # nested, but not as the shape [2]
    assert "nested as the shape [2]" in kserve_error(post(server, infer, {"inputs": [nested]}), 422)
    second = {**bytes_input, "name": "text_pair", "shape": [1], "data": ["c"]}
    pair = {"inputs": [{**bytes_input, "data": ["a", "b"]}, second]}
    assert "pair up" in kserve_error(post(server, infer, pair), 422)
    long = {"inputs": [{**bytes_input, "shape": [1], "data": ["good " * 200]}]}
    assert "truncate" in kserve_error(post(server, infer, long), 422)
    assert post(server, infer, {**long, "parameters": {"truncate": True}}).status_code == 200
    broken = httpx.post(server.url + infer, content=b"{", headers={"content-type": "application/json"})
    assert "not valid JSON" in kserve_error(broken, 422)
    assert "limit" in kserve_error(httpx.post(server.url + infer, content=b"x" * 70000), 413)
    assert kserve_error(httpx.get(server.url + infer), 405)


def test_unknown_v2_paths_have_the_protocol_shape(server, client):
    """Every path under /v2 answers errors in the protocol's shape, routes or not: tritonclient calls some that
    are not served, such as the model repository extension's index (not in the server metadata's
    ``extensions``), and needs a string message to raise a readable exception."""
    error = failure(client.get_model_repository_index)
    assert error.status() == "404" and error.message() == "Not Found"
    assert str(error) == "[404] Not Found"
    assert kserve_error(httpx.post(server.url + "/v2/repository/index", json={}), 404) == "Not Found"
    assert kserve_error(httpx.get(server.url + "/v2/nonexistent"), 404) == "Not Found"
    assert kserve_error(httpx.get(server.url + "/v2/models/sentiment/versions/1"), 404) == "Not Found"
    assert kserve_error(httpx.post(server.url + "/v2"), 405)  # a route, with another method
    # only the /v2 prefix itself: a path that merely starts with "v2" keeps the project's shape
    assert httpx.get(server.url + "/v2x").json()["error"] == {
        "message": "Not Found",
        "type": "not_found_error",
        "code": 404,
    }


def test_api_key_guards_v2_but_not_its_health_routes(exports, tmp_path):
    (tmp_path / "keys").write_text("sk-kserve\n")
    with ServerProcess([exports["sentiment"]], "--api-key-file", tmp_path / "keys", log_dir=tmp_path) as srv:
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200
        assert "API key" in kserve_error(httpx.get(srv.url + "/v2/models/sentiment"), 401)
        triton = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        error = failure(lambda: triton.infer("sentiment", [text_input(["good"], True)]))
        assert error.status() == "401"
        result = triton.infer(
            "sentiment", [text_input(["good"], True)], headers={"Authorization": "Bearer sk-kserve"}
        )
        assert result.as_numpy("label").shape == (1,)
        triton.close()
