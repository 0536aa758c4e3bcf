"""Starting adamix-serve: API keys, the --gpu fallback, broken folders refused with one line, and no torch."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from adamix_deploy.testing.processes import ServerProcess

from helpers.cli import run
from helpers.http import (
    error_message,
    post,
)

pytestmark = pytest.mark.integration


def test_api_key_is_required_and_never_logged(exports, tmp_path):
    key = "sk-test-0123456789abcdef"
    (tmp_path / "keys").write_text(f"# one per line\n{key}\nsecond-key\n")
    with ServerProcess([exports["sentiment"]], "--api-key-file", tmp_path / "keys", log_dir=tmp_path) as srv:
        url = srv.url + "/v1/models/sentiment/classify"
        body = {"inputs": ["good"]}
        assert error_message(httpx.post(url, json=body), 401)
        assert error_message(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert error_message(httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}x"}), 401)
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.post(url, json=body, headers={"X-API-Key": "second-key"}).status_code == 200
        assert error_message(httpx.get(srv.url + "/v1/models"), 401)
        assert httpx.get(srv.url + "/health").status_code == 200  # probes stay open
        assert httpx.get(srv.url + "/openapi.json").json()["components"]["securitySchemes"]
        assert key not in srv.log()
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    result = run(
        "adamix-serve", exports["sentiment"], "--api-key-file", empty, check=False, debug=False, timeout=60
    )
    assert result.returncode == 2 and "holds no key" in result.stderr


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
        return run("adamix-serve", *args, "--port", "1", check=False, debug=False, timeout=120)

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
from adamix_deploy.serving.http.app import create_app
from adamix_deploy.serving.http.server import check_folders
from adamix_deploy.serving.engine.runtime import ServerSettings
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
