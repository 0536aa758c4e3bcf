"""`pip install <repo>[serve]` into an empty virtualenv gives a working `adamix-serve` without torch,
transformers or gradio, and it answers exactly as the full development environment does; `[train,serve]`
resolves to transformers 5 with onnxruntime-genai and a clean `pip check`.

A regular (non-editable) install of a copy of the repository's files: it builds the real wheel, so the
package-dir mapping (serving/ -> adamix_deploy.serving, ...) is what gets tested. The sizes on disk and the
install time go to tests/artifacts/install_sizes.json (and are printed) for the README."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from adamix_deploy.testing.processes import BIN, ServerProcess

from helpers import ARTIFACTS, REPO

pytestmark = pytest.mark.integration

NOT_IN_SERVE = ("torch", "transformers", "gradio")
# pip's messages when it cannot reach an index: only then is the test skipped
NETWORK_ERROR = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|No route to host|Connection refused|ConnectTimeout|ReadTimeoutError|ProxyError|"
    r"Could not fetch URL"
)
TEXT = "the film was great"
PROMPT = "name[The Mill], food[Italian]"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would let the repository or the dev venv leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PIP_NO_INPUT": "1", **extra}


def du(path: Path) -> int:
    return int(
        subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    )


def copy_sources(dest: Path) -> Path:
    """The repository's own files (tracked, and new ones git does not ignore), without .venv, build/ or
    *.egg-info: pip builds a local folder in place, and building /work/main itself would write into it."""
    if (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for rel in filter(None, listed.split("\0")):
            src = REPO / rel
            if src.is_file():  # a tracked file another change deleted is simply absent
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "artifacts")
        shutil.copytree(REPO, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve-install")
    source = copy_sources(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
    empty = du(venv)
    started = time.monotonic()
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", f"{source}[serve]"],
        cwd=root,
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    seconds = time.monotonic() - started
    log = pip.stdout + pip.stderr
    if pip.returncode != 0:
        if NETWORK_ERROR.search(log):
            pytest.skip(f"pip cannot reach a package index:\n{log[-2000:]}")
        pytest.fail(f"pip install {source}[serve] failed:\n{log[-5000:]}")
    sizes = {
        "serve_venv_bytes": du(venv),
        "serve_empty_venv_bytes": empty,
        "serve_install_seconds": round(seconds, 1),
        "full_dev_venv": str(BIN.parent),
        "full_dev_venv_bytes": du(BIN.parent),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "install_sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    mib = 1 << 20
    print(
        f"\n[serve] venv {sizes['serve_venv_bytes'] / mib:.0f} MiB (empty venv {empty / mib:.0f} MiB), "
        f"pip install {seconds:.1f} s; full dev venv {sizes['full_dev_venv_bytes'] / mib:.0f} MiB"
    )
    return {"venv": venv, "root": root, **sizes}


def run_in(venv: Path, code: str, cwd: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=cwd, capture_output=True, text=True, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_serve_install_has_no_training_stack_and_the_mapped_packages(serve_venv, tmp_path):
    venv = serve_venv["venv"]
    for name in NOT_IN_SERVE:
        shown = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "show", name], capture_output=True)
        assert shown.returncode != 0, f"{name} is installed in the [serve] venv"
    code = (
        "import importlib.util, json, adamix_deploy.serving, adamix_deploy.contracts.export_folder\n"
        "from importlib.resources import files\n"
        f"print(json.dumps({{'found': [n for n in {NOT_IN_SERVE!r} if importlib.util.find_spec(n)],\n"
        "  'serving': adamix_deploy.serving.__file__,\n"
        "  'data': sorted(p.name for p in (files('adamix_deploy.quickstart') / 'data').iterdir())}))\n"
    )
    found = json.loads(run_in(venv, code, tmp_path))
    assert found["found"] == []
    assert Path(found["serving"]).is_relative_to(venv), found["serving"]  # the wheel, not the repository
    assert "sentiment_train.tsv" in found["data"]
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not any((site / top).exists() for top in ("serving", "exporters", "demo", "quickstart", "testing"))


class Server(ServerProcess):
    """`<bin>/adamix-serve` in a subprocess, started from ``cwd`` (outside the repository)."""

    def __init__(self, executable: Path, folders: list[Path], cwd: Path):
        env = clean_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        super().__init__(folders, "--threads", "1", log_dir=cwd, executable=executable, env=env, cwd=cwd)

    def post(self, path: str, body: dict) -> dict:
        response = httpx.post(self.url + path, json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


def answers(executable: Path, folders: list[Path], cwd: Path) -> tuple[dict, dict]:
    server = Server(executable, folders, cwd)
    try:
        classified = server.post("/v1/models/sentiment/classify", {"inputs": [TEXT]})
        generated = server.post("/v1/models/restaurants/generate", {"prompt": PROMPT, "max_new_tokens": 3})
    finally:
        server.stop()
    return classified["results"][0], generated["outputs"][0]


def test_the_serve_install_answers_like_the_full_environment(serve_venv, exports, tmp_path):
    folders = [exports["sentiment"], exports["restaurants"]]
    (tmp_path / "serve").mkdir()
    (tmp_path / "full").mkdir()
    serve_result, serve_output = answers(serve_venv["venv"] / "bin" / "adamix-serve", folders, tmp_path / "serve")
    full_result, full_output = answers(BIN / "adamix-serve", folders, tmp_path / "full")

    assert serve_result["label"] == full_result["label"]
    assert serve_result["scores"].keys() == full_result["scores"].keys() == {"negative", "positive"}
    for label, score in full_result["scores"].items():
        assert serve_result["scores"][label] == pytest.approx(score, abs=1e-6)
    assert serve_output["usage"]["completion_tokens"] == full_output["usage"]["completion_tokens"] == 3
    assert serve_output["text"] == full_output["text"]
    assert serve_output["finish_reason"] == full_output["finish_reason"] == "length"


def test_the_training_install_resolves_to_transformers_5_and_pip_check_is_clean(tmp_path):
    """`pip install <repo>[train,serve]` into an empty virtualenv: transformers 5, onnxruntime-genai's builder
    (the model builder), no optimum, and nothing `pip check` objects to."""
    source = copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", f"{source}[train,serve]"], capture_output=True, text=True, env=clean_env()
    )
    log = pip.stdout + pip.stderr
    if pip.returncode != 0 and NETWORK_ERROR.search(log):
        pytest.skip(f"pip cannot reach a package index:\n{log[-2000:]}")
    assert pip.returncode == 0, log[-5000:]
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    code = (
        "import json\nfrom importlib.metadata import PackageNotFoundError, version\n"
        "def v(name):\n    try:\n        return version(name)\n    except PackageNotFoundError:\n        return None\n"
        "print(json.dumps({n: v(n) for n in ('transformers', 'torch', 'onnxruntime', 'onnxruntime-genai',"
        " 'optimum', 'optimum-onnx', 'onnxruntime-gpu')}))\n"
    )
    versions = json.loads(run_in(venv, code, tmp_path))
    assert versions["transformers"].startswith("5."), versions
    assert versions["torch"].startswith("2.13.0"), versions
    assert versions["onnxruntime-genai"] is not None, versions
    assert versions["optimum"] is None and versions["optimum-onnx"] is None, versions
    assert versions["onnxruntime-gpu"] is None, versions
