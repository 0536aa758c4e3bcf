"""Fresh processes: every measurement runs in one of its own (thread pools and caches start cold and alike), as
``python -m benchmarks.<script> ...`` from the repository root; and the project's commands (adamix-train, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from adamix_deploy.testing.processes import BIN
from benchmarks.common.paths import REPO


class ChildFailed(RuntimeError):
    """A child process exited with an error; the message ends with its stderr."""


def _run(command: list[str], env: dict[str, str] | None) -> str:
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise ChildFailed(f"{' '.join(command)} exited with {out.returncode}:\n{out.stderr[-3000:]}")
    return out.stdout


def child(module: str, *args: str | int | float | Path, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m module ARGS`` in a fresh process; return the JSON object on its last line of output."""
    stdout = _run([sys.executable, "-m", module, *map(str, args)], env)
    return json.loads(stdout.strip().splitlines()[-1])


def step(module: str, *args: str | int | float | Path) -> None:
    """Run another benchmark's step (``python -m module ARGS``), its output shown; stop if it fails."""
    if subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO).returncode != 0:
        raise ChildFailed(f"python -m {module} {' '.join(map(str, args))} failed (its messages are above)")


def command(name: str, *args: str | int | float | Path, env: dict[str, str] | None = None) -> str:
    """Run one of this environment's commands (``adamix-train``, ``adamix-export``, ...); return its output."""
    return _run([str(BIN / name), *map(str, args)], env)
