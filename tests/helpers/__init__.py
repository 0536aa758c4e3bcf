"""What the tests share, by what it is (never imported from another test module):

- `helpers.data`: small data rows (sentiment, E2E, STS-B style pairs) and writing them as tables;
- `helpers.models`: tokenizers and tiny models built here, random mixture weights, mixture checkpoints;
- `helpers.cli`: the one runner for the package's commands (`run`) and where they live (`BIN`);
- `helpers.http`: what the HTTP tests send and compare with (conftest's session `server` runs with
  `SERVER_OPTIONS`);
- `helpers.engine`: what the in-process serving tests need (byte-level tokenizers, an event collector).

Processes (adamix-serve, Triton) are started with `adamix_deploy.testing`, which the benchmarks and the
quickstart share. The fixtures themselves (tiny_bert, exports, server, ...) are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository (tests/helpers/ -> tests/ -> the root)
SHARED_DATA = REPO.parent / "shared" / "data"  # the packaged models' data sets, for the slow tests
ARTIFACTS = REPO / "tests" / "artifacts"  # what tests keep between runs (git ignores it)
