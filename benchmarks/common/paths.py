"""Where the benchmarks read and write: results/ (committed), results/tmp/ (scratch: git-ignored), the data sets
in ../shared/data beside the repository, and the docs pages the report steps fill in."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
WORK = RESULTS / "tmp"
DATA = REPO.parent / "shared" / "data"
DOCS = REPO / "docs" / "benchmarks"
