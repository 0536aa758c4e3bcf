"""The layering rules, checked in fresh interpreters: which modules an import really loads (``sys.modules``),
from a working directory outside the repository, so that only the installed ``adamix_deploy`` package can be
imported (never a top-level ``serving`` or ``exporters`` found through the current directory)."""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.integration

SERVER_STACK = ("fastapi", "uvicorn", "starlette")
TRAINING_STACK = ("torch", "transformers", "onnxruntime_genai")  # onnxruntime_genai: its model builder, at export
# The layers, bottom to top: the contracts (tasks, checkpoint and export-folder formats, errors, the command
# wrapper, atomic writes); training (adamix_deploy's own modules); the exporters; the server (its engine, then
# its HTTP layer); the demo. Every stage may load the package root (lazy, torch-free) and the contracts; the
# exporters may also load the training stage and the server's engine (parity runs what serves). Nothing else.
LATER_STAGES = (
    "adamix_deploy.exporters",
    "adamix_deploy.serving",
    "adamix_deploy.demo",
    "adamix_deploy.quickstart",
)
# serving's HTTP layer: the app and every API's routes, and the Ray Serve deployment built on them. The exporter
# may use the server's engine (its parity check runs the engine's ONNX loops), never these.
SERVING_HTTP_LAYER = tuple(
    f"adamix_deploy.serving.{part}" for part in ("http", "native", "openai", "kserve", "adapters", "ray")
)
DEMO_CLIENT_MODULES = (
    "adamix_deploy.demo.cli",
    "adamix_deploy.demo.http_backend",
    "adamix_deploy.demo.app",
    "adamix_deploy.serving.http.api_keys",
)


def shared() -> tuple[str, ...]:
    """What every stage may load of adamix_deploy besides itself: the package root and the contracts."""
    return ("adamix_deploy", "adamix_deploy.contracts", *submodules("adamix_deploy.contracts"))


def training_modules() -> list[str]:
    """The training stage: adamix_deploy's own modules (the other stages install as its subpackages)."""
    others = (*LATER_STAGES, "adamix_deploy.contracts", "adamix_deploy.testing")
    return [m for m in submodules("adamix_deploy") if not any(matches(m, o) for o in others)]


def submodules(package: str) -> list[str]:
    """The package's modules and subpackages, recursively, found on disk without importing any of them."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return _modules_in(spec.submodule_search_locations, package)


def _modules_in(locations: list[str], package: str) -> list[str]:
    found = []
    for m in pkgutil.iter_modules(locations, package + "."):
        found.append(m.name)
        if m.ispkg:
            found += _modules_in([str(Path(m.module_finder.path) / m.name.rpartition(".")[2])], m.name)
    return sorted(found)


def loaded_after(modules: tuple[str, ...] | list[str], cwd: Path) -> set[str]:
    """Every module in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"importing {modules} failed:\n{out.stderr}"
    return set(json.loads(out.stdout.splitlines()[-1]))


def matches(name: str, pattern: str) -> bool:
    """``fastapi`` matches fastapi and fastapi.*; ``adamix_deploy.mixture*`` matches any name it starts."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


def import_chain(modules: tuple[str, ...] | list[str], target: str, cwd: Path) -> str:
    """``a -> b -> target``: who imported ``target`` first, read from ``python -X importtime`` (a module's line
    comes after those of the modules it imported, one indentation level deeper)."""
    code = "".join(f"import {m}\n" for m in modules)  # import statements: importlib.import_module is not timed
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s*\d+ \|\s*\d+ \|( *)(\S+)$", line)
        if m:
            rows.append((len(m.group(1)) // 2, m.group(2)))
    for i, (depth, name) in enumerate(rows):
        if name == target:
            chain = [name]
            for later_depth, later_name in rows[i + 1 :]:
                if later_depth < depth:
                    chain.append(later_name)
                    depth = later_depth
            return " -> ".join(reversed(chain))
    return f"{target} (no chain found)"


def check(modules: tuple[str, ...] | list[str], forbidden, cwd: Path, allowed_adamix=None) -> None:
    loaded = loaded_after(modules, cwd)
    bad = sorted(n for n in loaded if any(matches(n, p) for p in forbidden))
    if allowed_adamix is not None:
        bad += sorted(
            n
            for n in loaded
            if matches(n, "adamix_deploy") and n not in allowed_adamix and not any(matches(n, a) for a in modules)
        )
    # report the top-level offenders (torch, not its 500 submodules), each with how it got imported
    roots = [n for n in bad if not any(n != o and n.startswith(o + ".") for o in bad)]
    assert not roots, "\n".join(f"{modules} loads {n}: {import_chain(modules, n, cwd)}" for n in roots)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the repository: ``python -c`` puts it first on sys.path."""
    return tmp_path


def test_the_base_package_imports_no_stage_and_no_heavy_library(outside):
    forbidden = ("adamix_deploy.serving", "adamix_deploy.demo", *SERVER_STACK, "gradio", "onnxruntime", "torch")
    check(["adamix_deploy"], forbidden, outside)


@pytest.mark.parametrize("module", submodules("adamix_deploy.contracts"))
def test_the_contracts_import_no_stage_and_no_heavy_library(module, outside):
    forbidden = (*TRAINING_STACK, "onnxruntime", "numpy", *SERVER_STACK, "gradio")
    check([module], forbidden, outside, allowed_adamix=shared())


def test_training_imports_no_later_stage(outside):
    """One interpreter loads every training module: none of them loads an exporter, the server or the demo."""
    check(training_modules(), (*LATER_STAGES, *SERVER_STACK, "gradio", "onnxruntime"), outside)


@pytest.mark.parametrize("module", submodules("adamix_deploy.exporters"))
def test_exporters_never_import_the_http_server(module, outside):
    check([module], (*SERVING_HTTP_LAYER, *SERVER_STACK, "gradio"), outside)


@pytest.mark.parametrize("module", ["adamix_deploy.serving.engine", *submodules("adamix_deploy.serving.engine")])
def test_the_serving_engine_never_imports_the_http_layer(module, outside):
    check([module], (*SERVING_HTTP_LAYER, *SERVER_STACK), outside)


# `adamix-serve --ray` (extra [ray]): only these serving modules may import ray, and only the command's --ray path
# imports them; serving.ray.options (the CLI's checks) stays free of ray
SERVING_RAY_MODULES = (
    "adamix_deploy.serving.ray.batching",
    "adamix_deploy.serving.ray.deployment",
    "adamix_deploy.serving.ray.server",
)


def needs_ray(module: str):
    """The Ray Serve modules import ray: they are checked where the [ray] extra is installed."""
    if module not in SERVING_RAY_MODULES:
        return module
    found = importlib.util.find_spec("ray") is not None
    return pytest.param(module, marks=pytest.mark.skipif(not found, reason="ray is not installed (extra [ray])"))


@pytest.mark.parametrize("module", [needs_ray(m) for m in submodules("adamix_deploy.serving")])
def test_serving_imports_neither_torch_nor_training_code(module, outside):
    allowed = (*shared(), "adamix_deploy.serving", *submodules("adamix_deploy.serving"))
    check([module], TRAINING_STACK, outside, allowed_adamix=allowed)


@pytest.mark.parametrize(
    "module", [m for m in submodules("adamix_deploy.serving") if m not in SERVING_RAY_MODULES]
)
def test_plain_serving_never_imports_ray(module, outside):
    check([module], ("ray",), outside)


def test_the_ray_deployment_runs_the_usual_app_without_torch(outside):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (extra [ray])")
    allowed = (*shared(), "adamix_deploy.serving", *submodules("adamix_deploy.serving"))
    check(list(SERVING_RAY_MODULES), (*TRAINING_STACK, "gradio"), outside, allowed_adamix=allowed)


@pytest.mark.parametrize("module", DEMO_CLIENT_MODULES)
def test_the_demo_client_mode_needs_no_runtime_no_server_and_no_torch(module, outside):
    check([module], ("onnxruntime", "uvicorn", "torch"), outside)


@pytest.mark.parametrize("module", [m for m in DEMO_CLIENT_MODULES if m != "adamix_deploy.demo.app"])
def test_the_demo_client_mode_imports_no_fastapi(module, outside):
    check([module], ("fastapi",), outside)


def test_the_demo_page_knows_the_server_only_by_its_result_types(outside):
    # Gradio is built on FastAPI, so the page imports fastapi through gradio; what it must never import is the
    # server itself (its app, runtime, sessions): it reaches models through a backend.
    allowed = (
        *shared(), "adamix_deploy.demo", "adamix_deploy.demo.app",
        "adamix_deploy.demo.backend", "adamix_deploy.demo.formatting", "adamix_deploy.serving",
        "adamix_deploy.serving.engine", "adamix_deploy.serving.engine.results",
    )  # fmt: skip
    check(["adamix_deploy.demo.app"], ("onnxruntime", "torch"), outside, allowed_adamix=allowed)


@pytest.mark.parametrize("module", ["adamix_deploy.testing", *submodules("adamix_deploy.testing")])
def test_the_process_helpers_need_only_the_standard_library(module, outside):
    """The tests, the benchmarks and the quickstart share them, so every install must import them."""
    foreign = loaded_after([module], outside) - loaded_after([], outside)
    foreign = {n for n in foreign if n.split(".")[0] not in sys.stdlib_module_names}
    assert foreign <= {"adamix_deploy", *submodules("adamix_deploy.testing"), "adamix_deploy.testing"}, foreign


BARE_IMPORT = re.compile(r"^\s*(from|import) (serving|exporters|demo|quickstart|testing)\b", re.MULTILINE)
BARE_IMPORT_MODULE = re.compile(r"import_module\(\s*[\"'](serving|exporters|demo|quickstart|testing)\b")


def repository_python_files() -> list[Path]:
    if (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [REPO / p for p in listed.split("\0") if p and (REPO / p).is_file()]
    return [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]


def test_nothing_imports_the_folders_by_their_bare_top_level_names():
    files = repository_python_files()
    assert any(f.name == "test_import_rules.py" for f in files)
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern in (BARE_IMPORT, BARE_IMPORT_MODULE):
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(REPO)}:{line}: {m.group(0).strip()}")
    assert not offenders, "bare top-level imports:\n" + "\n".join(offenders)
