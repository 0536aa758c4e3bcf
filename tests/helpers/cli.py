"""The one way the tests run the package's commands (adamix-train, adamix-export, adamix-serve, ...): a real
process of this environment's console script, as a user runs it. Every test that calls it starts a process, so
it is marked ``integration``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from adamix_deploy.testing.processes import BIN  # this environment's console scripts


def run(
    command: str,
    *args,
    check: bool = True,
    debug: bool = True,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``BIN/command args`` and capture its output. ``check`` raises with the end of stderr when it exits
    non-zero; ``debug`` (ADAMIX_DEBUG=1) lets an unexpected exception show its traceback in a test failure: turn
    it off where a test checks the one-line error a user sees."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **({"ADAMIX_DEBUG": "1"} if debug else {}),
    }
    result = subprocess.run(
        [str(BIN / command), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


__all__ = ["BIN", "run"]
