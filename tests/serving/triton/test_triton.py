"""adamix-triton: export folder -> Triton model repository, checked against adamix-serve.

The python layout is served by a REAL Triton Inference Server (testing/triton_server.py): the ``tritonserver``
binary and its Python backend come from the ``nvidia-pytriton`` wheel, installed (no dependencies, it pins
numpy<2) under tests/artifacts/triton/ with the Python models' execution environment (a venv with numpy<2,
tokenizers, onnxruntime) beside it, both cached between runs. The wheel bundles no onnxruntime backend, so the
ensemble layout is checked by parsing its configs into Triton's ModelConfig protobuf and running its steps here:
the tokenizer and postprocess models' own ``model.py`` (initialize + execute, with a stand-in for Triton's
``triton_python_backend_utils``) and the ONNX file with exactly the inputs the onnxruntime-backend config
declares.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format

from adamix_deploy.testing.processes import ServerProcess
from adamix_deploy.testing.triton_server import TritonServer, TritonUnavailable, ensure_triton

from helpers import REPO
from helpers.cli import run

TEXTS = ["the film was great", "awful plot and boring acting", "a lovely story", "it was really dull", "fine"]
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def triton() -> Path:
    """tests/artifacts/triton/, built once (`triton_server.ensure_triton`); skips where it cannot be installed."""
    try:
        return ensure_triton()
    except TritonUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """adamix-serve over the sentiment export: the reference every Triton answer is compared with."""
    with ServerProcess([exports["sentiment"]], log_dir=tmp_path_factory.mktemp("serve-logs")) as srv:
        yield srv


def reference(server: ServerProcess, texts: list[str]) -> list[dict]:
    response = httpx.post(f"{server.url}/v1/models/sentiment/classify", json={"inputs": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def assert_same(label: str, scores: np.ndarray, expected: dict, labels: list[str]) -> None:
    assert label == expected["label"]
    assert np.allclose(scores, [expected["scores"][name] for name in labels], atol=TOLERANCE, rtol=0)


def adamix_triton(*args: str) -> subprocess.CompletedProcess:
    return run("adamix-triton", *args, check=False, debug=False, timeout=300)


def parse_config(path: Path):
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# -- the python layout on a real Triton server -----------------------------------------------------------------


@pytest.mark.integration
def test_python_layout_on_a_real_triton_server_answers_as_adamix_serve(triton, exports, served, tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    # a 20 ms queue delay: tiny models answer so fast on 2 cores that requests would rarely meet otherwise
    out = adamix_triton(exports["sentiment"], "--output", repo, "--layout", "python", "--name", "sentiment",
                        "--max-batch-size", 16, "--preferred-batch-sizes", "4,8", "--max-queue-delay-us", 20000,
                        "--python-env", triton / "stub-env")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["models"] == ["sentiment"]
    server = TritonServer(triton, repo, tmp_path)
    try:
        labels = ["negative", "positive"]
        expected = reference(served, TEXTS)

        def infer_http(client, texts: list[str], asynchronous: bool = False):
            text = httpclient.InferInput("text", [len(texts), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
            outputs = [httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("scores")]
            return (client.async_infer if asynchronous else client.infer)("sentiment", [text], outputs=outputs)

        # HTTP: several texts in one request (batch rows)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", concurrency=32)
        result = infer_http(http, TEXTS)
        for label, scores, exp in zip(result.as_numpy("label"), result.as_numpy("scores"), expected, strict=True):
            assert_same(label[0].decode(), scores, exp, labels)

        # gRPC: one text per request
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        for text, exp in zip(TEXTS, expected, strict=True):
            data = grpcclient.InferInput("text", [1, 1], "BYTES")
            data.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            result = grpc.infer("sentiment", [data])
            assert_same(result.as_numpy("label")[0][0].decode(), result.as_numpy("scores")[0], exp, labels)

        # 64 concurrent one-text requests: Triton's dynamic batcher merges them (executions < inferences)
        # the Python backend reports a request's statistics after its response is sent: read them once settled
        before = settled_stats(server.url)
        many = [TEXTS[i % len(TEXTS)] for i in range(64)]
        # the HTTP client's own concurrency (a pool of 32 connections; it is not thread-safe)
        pending = [infer_http(http, [t], asynchronous=True) for t in many]
        results = [p.get_result() for p in pending]
        for text, result in zip(many, results, strict=True):
            exp = expected[TEXTS.index(text)]
            assert_same(result.as_numpy("label")[0][0].decode(), result.as_numpy("scores")[0], exp, labels)
        stats = settled_stats(server.url)
        inferences = stats["inference_count"] - before["inference_count"]
        executions = stats["execution_count"] - before["execution_count"]
        assert inferences == 64 and executions < inferences, stats

        # an input over the token limit fails its request with the server's reason, as adamix-serve's 422 does
        with pytest.raises(InferenceServerException, match="takes at most 64"):
            infer_http(http, ["good " * 80])

        http.close()
        grpc.close()
    finally:
        server.stop()


def settled_stats(url: str, timeout: float = 10.0) -> dict:
    """The model's statistics once two reads 0.2 s apart agree (Triton updates them just after answering)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        stats = httpx.get(f"{url}/v2/models/sentiment/stats", timeout=10).json()["model_stats"][0]
        counts = (stats["inference_count"], stats["execution_count"])
        if counts == last or time.monotonic() > deadline:
            return stats
        last = counts
        time.sleep(0.2)


# -- the ensemble layout: configs chain, each step computes what adamix-serve computes ---------------------------


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class FakeBackendUtils:
    """The part of Triton's ``triton_python_backend_utils`` that model.py uses."""

    Tensor = FakeTensor
    InferenceResponse = FakeResponse
    TritonError = str

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str) -> FakeTensor:
        return FakeTensor(name, request[name])


def load_python_model(repo: Path, model: str):
    """The model as Triton's stub loads it: its model.py, initialised with its own config (as JSON)."""
    from google.protobuf import json_format

    spec = importlib.util.spec_from_file_location(f"triton_{model}", repo / model / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.pb_utils = FakeBackendUtils
    config = json_format.MessageToDict(
        parse_config(repo / model / "config.pbtxt"), preserving_proto_field_name=True
    )
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": json.dumps(config), "model_repository": str(repo / model),
                         "model_version": "1", "model_instance_kind": "CPU"})  # fmt: skip
    return instance


@pytest.mark.integration
def test_ensemble_configs_chain_and_each_step_answers_as_adamix_serve(exports, served, tmp_path):
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2

    from adamix_deploy.serving.triton.repository import BatchingOptions, write_repository

    repo = tmp_path / "repo"
    batching = BatchingOptions(max_batch_size=32, preferred_batch_sizes=(4, 8, 16), instances=2, kind="gpu")
    summary = write_repository(exports["sentiment"], repo, name="sentiment", batching=batching)
    assert summary["models"] == ["sentiment", "sentiment_tokenizer", "sentiment_onnx", "sentiment_postprocess"]
    configs = {name: parse_config(repo / name / "config.pbtxt") for name in summary["models"]}
    ensemble, onnx = configs["sentiment"], configs["sentiment_onnx"]
    assert ensemble.platform == "ensemble" and (repo / "sentiment" / "1").is_dir()
    assert onnx.backend == "onnxruntime" and (repo / "sentiment_onnx" / "1" / "model.onnx").is_file()
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == [
        ("text", model_config_pb2.TYPE_STRING, [1])
    ]
    assert [o.name for o in ensemble.output] == ["label", "scores"]
    for name in summary["models"][1:]:
        c = configs[name]
        assert c.max_batch_size == 32 and list(c.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert c.dynamic_batching.max_queue_delay_microseconds == 500
        kind = (
            model_config_pb2.ModelInstanceGroup.KIND_GPU
            if name == "sentiment_onnx"
            else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        assert [(g.kind, g.count) for g in c.instance_group] == [(kind, 2)]

    # the steps chain: each step's inputs are the ensemble's input or an earlier step's outputs, with the same
    # types and dims on both sides; the ensemble's outputs are the last step's
    session = ort.InferenceSession(
        str(repo / "sentiment_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in onnx.input] == [i.name for i in session.get_inputs()]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 and list(i.dims) == [-1] for i in onnx.input)
    assert [(o.name, o.data_type, list(o.dims)) for o in onnx.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [2])
    ]
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        c = configs[step.model_name]
        declared = {t.name: (t.data_type, list(t.dims)) for t in c.input}
        assert set(step.input_map) == set(declared), step.model_name
        for model_input, tensor in step.input_map.items():
            assert available[tensor] == declared[model_input], (step.model_name, model_input)
        produced = {t.name: (t.data_type, list(t.dims)) for t in c.output}
        assert set(step.output_map) == set(produced)
        available.update({tensor: produced[out] for out, tensor in step.output_map.items()})
    assert all(available[o.name] == (o.data_type, list(o.dims)) for o in ensemble.output)

    # run the chain: the tokenizer model's execute (one request of several texts, one of a single text), the
    # ONNX graph fed exactly the declared names and types, the postprocess model's execute
    tokenizer = load_python_model(repo, "sentiment_tokenizer")
    postprocess = load_python_model(repo, "sentiment_postprocess")
    requests = [
        {"text": np.array([[t.encode()] for t in TEXTS[:4]], dtype=object)},
        {"text": np.array([[TEXTS[4].encode()]], dtype=object)},
    ]
    numpy_types = {model_config_pb2.TYPE_INT64: np.int64}
    expected = reference(served, TEXTS)
    results = []
    for response in tokenizer.execute(requests):
        assert response.error is None
        feed = {}
        for declared in onnx.input:
            array = response.outputs[declared.name]
            assert array.dtype == numpy_types[declared.data_type] and array.ndim == 1 + len(declared.dims)
            feed[declared.name] = array
        logits = session.run([o.name for o in onnx.output], feed)[0]
        (post,) = postprocess.execute([{"logits": logits}])
        results += zip(post.outputs["label"][:, 0], post.outputs["scores"], strict=True)
    for (label, scores), exp in zip(results, expected, strict=True):
        assert_same(label.decode(), scores, exp, ["negative", "positive"])
    (too_long,) = tokenizer.execute([{"text": np.array([[("good " * 80).encode()]], dtype=object)}])
    assert "takes at most 64" in too_long.error


def test_the_tokenizer_pads_to_a_few_widths_so_onnx_requests_batch(exports, tmp_path):
    from adamix_deploy.serving.triton.repository import write_repository

    repo = tmp_path / "repo"
    write_repository(exports["sentiment"], repo, name="s")
    tokenizer = load_python_model(repo, "s_tokenizer")
    widths = {
        r.outputs["input_ids"].shape[1]
        for r in tokenizer.execute(
            [{"text": np.array([[("good " * n).encode()]], dtype=object)} for n in range(1, 40)]
        )
    }
    assert widths == {8, 16, 32, 64}


@pytest.mark.integration
def test_dynamic_batching_can_be_left_out(exports, tmp_path):
    out = adamix_triton(exports["sentiment"], "--output", tmp_path / "repo", "--layout", "python", "--name", "s",
                        "--no-dynamic-batching", "--instances", 2)  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = parse_config(tmp_path / "repo" / "s" / "config.pbtxt")
    assert not config.HasField("dynamic_batching") and config.max_batch_size == 32
    assert [g.count for g in config.instance_group] == [2]


def test_postprocess_of_a_regression_export_gives_one_score(exports, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "triton_model",
        REPO / "serving" / "triton" / "python_backend" / "model.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.postprocess(np.array([[0.25], [-1.5]], dtype=np.float32), None)
    assert (
        list(out) == ["score"] and out["score"].dtype == np.float32 and out["score"].tolist() == [[0.25], [-1.5]]
    )


# -- bad input: one line, exit 2 ----------------------------------------------------------------------------


@pytest.mark.integration
def test_a_generation_export_is_refused_in_one_line(exports, tmp_path):
    out = adamix_triton(exports["restaurants"], "--output", tmp_path / "repo")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "generation on Triton is out of scope" in out.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.integration
def test_bad_options_and_an_existing_output_are_refused(exports, tmp_path):
    existing = tmp_path / "repo"
    existing.mkdir()
    out = adamix_triton(exports["sentiment"], "--output", existing)
    assert out.returncode == 2 and "--overwrite" in out.stderr and out.stderr.count("\n") == 1
    out = adamix_triton(exports["sentiment"], "--output", tmp_path / "r2", "--preferred-batch-sizes", "4,64")
    assert out.returncode == 2 and "64" in out.stderr and out.stderr.count("\n") == 1
    out = adamix_triton(exports["sentiment"], "--output", tmp_path / "r3", "--python-env", tmp_path)
    assert out.returncode == 2 and "bin/activate" in out.stderr
    out = adamix_triton(exports["sentiment"], "--output", existing, "--overwrite", "--layout", "python")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (existing / "sentiment" / "1").iterdir()) == [
        "model.onnx",
        "model.py",
        "tokenizer.json",
    ]
    assert not list(tmp_path.glob(".repo.*"))  # the atomic write left nothing behind
