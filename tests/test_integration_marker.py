"""The ``integration`` marker's check (helpers/integration_marker.py), run on a small suite of its own: a test
without the marker that starts a process, itself or through a fixture, fails and names the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # it runs pytest in a subprocess

SUITE = """
import subprocess
import sys

import pytest

PYTHON = [sys.executable, "-c", "pass"]


@pytest.fixture(scope="module")
def process():
    with subprocess.Popen(PYTHON) as p:
        yield p


def test_unmarked_run():
    subprocess.run(PYTHON, check=True)


@pytest.mark.integration
def test_marked_run():
    subprocess.run(PYTHON, check=True)


def test_unmarked_fixture(process):
    pass


def test_unmarked_run_then_skip():
    subprocess.run(PYTHON, check=True)
    pytest.skip("skipped after starting a process")


def test_no_process():
    pass
"""


def test_unmarked_tests_that_start_a_process_fail_and_marked_ones_pass(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    integration: starts a process\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["helpers.integration_marker"]\n')
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # where `helpers` is
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_suite.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outcomes = {
        line.split("::")[1].split()[0]: line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR")) and "::" in line
    }
    assert outcomes == {
        "test_unmarked_run": "FAILED",
        "test_marked_run": "PASSED",
        "test_unmarked_fixture": "FAILED",
        "test_unmarked_run_then_skip": "FAILED",
        "test_no_process": "PASSED",
    }, result.stdout
    # Counted in the failures section, where the message starts a line: the short summary repeats it, cut to the
    # terminal's width, so its count there depends on COLUMNS.
    failure_lines = [
        ln for ln in result.stdout.splitlines() if ln.startswith("starts a process but is not marked")
    ]
    assert len(failure_lines) == 3, result.stdout
    assert f"{sys.executable} -c pass" in result.stdout
