#!/usr/bin/env bash
# README command 2: install, then run the whole test suite (unit tests on tiny models, and the slow tests
# on the packaged MiniLM / SmolLM2 with ../shared/data, which skip with a reason when that folder is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
