"""The ``integration`` marker's check, a pytest plugin (tests/conftest.py loads it through ``pytest_plugins``).

A test that starts a process (a command through `helpers.cli.run`, a server, torchrun, Ray, Triton, a browser),
itself or through a fixture of any scope, is marked ``integration``, so that ``pytest -m "not integration"`` is
the fast loop. Every `subprocess.Popen` made while a test runs (its setup, call and teardown) is recorded, and a
test without the marker that made one fails, naming the commands. The processes themselves run normally: the
check turns a passed or skipped report into a failure after the fact and changes nothing else.

A shared fixture starts its process once, for the first test that needs it, so in a full run a later unmarked
user of it goes unnoticed. In a ``-m "not integration"`` run no marked test starts anything, so there the check
finds every unmarked test that needs a process. Only `subprocess.Popen` is watched (the standard library's
`subprocess.run`, `asyncio`'s subprocesses, selenium, Ray and torchrun's launchers all go through it); the
package starts no process any other way (no multiprocessing, os.fork or os.system)."""

from __future__ import annotations

import os
import subprocess

import pytest

_running: pytest.Item | None = None  # the test whose setup, call or teardown runs now
_unmarked: list[str] = []  # the commands it started without the marker
_popen_init = subprocess.Popen.__init__


def _recording_popen_init(self, args, *rest, **kwargs):
    if _running is not None and _running.get_closest_marker("integration") is None:
        command = args if isinstance(args, (str, bytes, os.PathLike)) else " ".join(map(str, args))
        _unmarked.append(str(command))
    _popen_init(self, args, *rest, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _recording_popen_init


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if call.when == "setup" and report.passed:
        return report  # what the fixtures started is reported with the call
    if _unmarked and not report.failed:
        started = "\n  ".join(dict.fromkeys(_unmarked))
        report.outcome = "failed"
        report.longrepr = (
            "starts a process but is not marked integration (@pytest.mark.integration on the test, or "
            f"pytestmark = pytest.mark.integration for its module):\n  {started}"
        )
    _unmarked.clear()
    return report
