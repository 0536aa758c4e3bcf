"""Real servers in subprocesses on 127.0.0.1, for the tests, the benchmarks and the quickstart: one readiness wait
and one process wrapper (no in-process shortcuts). The standard library only: every install has it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent  # the console scripts of this environment (adamix-serve, adamix-demo, ...)
LOG_TAIL = 5000  # characters of a process's log that a failure message quotes

# a local server is never reached through a proxy, whatever http_proxy says
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotReady(RuntimeError):
    """A server did not come up: its process ended (``returncode`` is set) or ``url`` did not answer 200 in time."""

    def __init__(self, message: str, url: str, returncode: int | None = None):
        super().__init__(message)
        self.url, self.returncode = url, returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, timeout_s: float = 2) -> bool:
    """Whether ``url`` answers a GET with 200 now."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:  # refused, reset, timed out, or an HTTP error status (503 while loading)
        return False


def wait_until_ready(
    url: str,
    timeout_s: float,
    process: subprocess.Popen | None = None,
    log: Callable[[], str] | None = None,
    interval_s: float = 0.05,
) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took. Raise `NotReady` if ``process`` exits first
    or the time runs out, quoting the end of ``log()`` when given."""
    start = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise NotReady(
                f"{process.args[0]} exited with {process.returncode}{_tail(log)}", url, process.returncode
            )
        if answers(url):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise NotReady(f"{url} did not answer after {timeout_s:g} s{_tail(log)}", url)
        time.sleep(interval_s)


def _tail(log: Callable[[], str] | None) -> str:
    return f":\n{log()[-LOG_TAIL:]}" if log is not None else ""


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, ``pid`` first (a server may be several processes: Ray, Triton)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process just ended
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM, then SIGKILL if it has not ended after ``timeout_s``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ServiceProcess:
    """A command that serves HTTP, in a subprocess with its output in ``log_path`` (discarded without one);
    `wait_ready` returns once ``ready_url`` answers 200 and records the time since the start in ``ready_s``."""

    def __init__(
        self,
        command: Sequence[str | Path],
        ready_url: str,
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.ready_url, self.log_path = ready_url, log_path
        self.ready_s: float | None = None
        self._log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115 (closed by stop)
        output = self._log if self._log is not None else subprocess.DEVNULL
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(c) for c in command], stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )

    def wait_ready(self, timeout_s: float) -> ServiceProcess:
        """Wait for ``ready_url``; on failure stop the process and raise `NotReady` with its log."""
        try:
            wait_until_ready(self.ready_url, timeout_s, self.proc, self.log if self._log is not None else None)
        except NotReady:
            self.stop()
            raise
        self.ready_s = time.monotonic() - self.started
        return self

    def log(self) -> str:
        if self._log is None:
            return ""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30) -> int:
        returncode = stop_process(self.proc, timeout_s)
        if self._log is not None:
            self._log.close()
        return returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess(ServiceProcess):
    """``adamix-serve FOLDERS OPTIONS`` on a free port (or ``port``), ready once ``/ready`` answers. By default
    this environment's command with HF_HUB_OFFLINE=1 and OMP_NUM_THREADS=1, its log in ``log_dir``."""

    def __init__(
        self,
        folders: Sequence[Path | str],
        *options: str,
        log_dir: Path,
        ready_timeout: float = 120,
        executable: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [executable or BIN / "adamix-serve", *folders, "--port", str(self.port), *options]
        env = env if env is not None else {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        super().__init__(
            command, f"{self.url}/ready", log_path=log_dir / f"server-{self.port}.log", env=env, cwd=cwd
        )
        self.wait_ready(ready_timeout)
