"""A real Triton Inference Server for tests and benchmarks: the ``tritonserver`` binary and its Python backend come
from the ``nvidia-pytriton`` wheel, installed (no dependencies: it pins numpy<2) under the repository's
tests/artifacts/triton/ (or $ADAMIX_TRITON_HOME) with the Python models' execution environment (a venv with
numpy<2, tokenizers, onnxruntime) beside it, built once and cached between runs. Nothing of it goes into the
project's .venv. Used by tests/serving/triton/test_triton.py and the scale-out benchmark
(benchmarks/scale_out.py)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from adamix_deploy.testing.processes import ServiceProcess, free_port

# in a checkout (the editable install) testing/ sits beside tests/; git ignores tests/artifacts/
ARTIFACTS = Path(
    os.environ.get("ADAMIX_TRITON_HOME")
    or Path(__file__).resolve().parent.parent / "tests" / "artifacts" / "triton"
)
PYTRITON = "nvidia-pytriton==0.7.0"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonUnavailable(Exception):
    """The Triton server cannot be installed here (no wheel, or no stub for this Python); tests skip on it."""


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


def _build_triton(root: Path) -> None:
    """tritonserver with this Python's backend stub, and the stub's environment, under ``root``."""
    wheel = root / "wheel"
    out = _pip("install", "-q", "--no-deps", "--target", str(wheel), PYTRITON)
    if out.returncode != 0:
        raise TritonUnavailable(
            f"the {PYTRITON} wheel (the tritonserver binary) cannot be installed: {out.stderr[-300:]}"
        )
    dist = wheel / "pytriton" / "tritonserver"
    stub = dist / "python_backend_stubs" / PY / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"{PYTRITON} ships no Python backend stub for Python {PY}")
    # as pytriton does: the server tree without the per-version stubs, this Python's stub in the backend folder
    shutil.copytree(dist, root / "server", ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, root / "server" / "backends" / "python" / "triton_python_backend_stub")
    shutil.move(str(wheel / "nvidia_pytriton.libs"), root / "libs")
    shutil.rmtree(wheel)
    # the Python models' EXECUTION_ENV_PATH: a venv of this Python version, numpy<2 for the stub
    env = root / "stub-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    site = env / "lib" / f"python{PY}" / "site-packages"
    out = _pip("install", "-q", "--target", str(site), "numpy<2", "tokenizers", "onnxruntime")
    if out.returncode != 0:
        raise RuntimeError(f"building the stub environment failed:\n{out.stderr[-2000:]}")
    # the backend puts ENV/lib first on LD_LIBRARY_PATH: the stub then loads the libpython of this very Python
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "") / f"libpython{PY}.so.1.0"
    if libpython.is_file():
        (env / "lib" / libpython.name).symlink_to(libpython)


def ensure_triton() -> Path:
    """ARTIFACTS (server/, libs/, stub-env/), built once; a run that finds no ``complete`` marker
    builds it again. Built in place, not renamed into place: a venv's bin/activate names its own path. Raises
    `TritonUnavailable` where it cannot be installed."""
    ARTIFACTS.parent.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS.parent / ".triton.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions at once: one builds, the other waits
        if not (ARTIFACTS / "complete").is_file():
            shutil.rmtree(ARTIFACTS, ignore_errors=True)
            ARTIFACTS.mkdir()
            _build_triton(ARTIFACTS)
            (ARTIFACTS / "complete").write_text(PYTRITON)
    return ARTIFACTS


class TritonServer(ServiceProcess):
    """A real ``tritonserver`` subprocess on free ports, ready once ``/v2/health/ready`` answers."""

    def __init__(self, install: Path, repository: Path, log_dir: Path, timeout: float = 180):
        self.http_port, self.grpc_port, metrics = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        # the wheel's shared libraries (an empty LD_LIBRARY_PATH entry would mean the working directory)
        libraries = [str(install / "libs"), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(libraries)}
        command = [
            str(install / "server" / "bin" / "tritonserver"), "--model-repository", str(repository),
            "--backend-directory", str(install / "server" / "backends"), "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--metrics-port", str(metrics), "--allow-metrics", "false",
        ]  # fmt: skip
        log_path = log_dir / f"triton-{self.http_port}.log"
        super().__init__(command, f"{self.url}/v2/health/ready", log_path=log_path, env=env)
        self.wait_ready(timeout)
