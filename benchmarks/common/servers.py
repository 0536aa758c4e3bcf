"""A server under test: its command started and made ready by `adamix_deploy.testing.processes` (the tests' and
the quickstart's readiness wait), the time to ready, and what its processes hold in memory and spent in CPU."""

from __future__ import annotations

import os
from pathlib import Path

from adamix_deploy.testing.processes import BIN, ServiceProcess, process_tree
from benchmarks.common.paths import WORK

LOGS = WORK / "logs"  # each server's output, for when one does not come up


class Server(ServiceProcess):
    """``command`` serving on 127.0.0.1:``port``, ready once ``ready_path`` answers 200: ``ready_s`` (start to
    ready, rounded), ``rss_ready`` (its memory then) and `memory()` (now, and its peak)."""

    def __init__(
        self, command: list[str], ready_path: str, port: int, env: dict | None = None, timeout: float = 300
    ):
        self.url = f"http://127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = LOGS / f"{Path(command[0]).name}-{port}.log"
        super().__init__(command, self.url + ready_path, log_path=log_path, env={**os.environ, **(env or {})})
        self.wait_ready(timeout)
        self.ready_s = round(self.ready_s, 2)
        self.rss_ready = rss_mib(self.proc.pid)

    def memory(self) -> dict:
        """VmRSS (now) and VmHWM (the peak) of the server's own process, MiB."""
        return rss_mib(self.proc.pid)


def adamix_server(folder: Path | list[Path], port: int, *options: str, env: dict | None = None) -> Server:
    """``adamix-serve FOLDER(S) --port PORT --log-level warning OPTIONS``."""
    folders = folder if isinstance(folder, list) else [folder]
    command = [
        str(BIN / "adamix-serve"),
        *map(str, folders),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *options,
    ]
    return Server(command, "/ready", port, env)


def rss_mib(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a server's processes (pages they share are counted in each)."""
    total = 0
    for current in process_tree(pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{current}/status").read_text().splitlines())
            total += int(fields["VmRSS"].split()[0])
        except (OSError, KeyError, ValueError):
            continue
    return round(total / 1024, 1)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a server's processes have used so far."""
    ticks = 0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")
