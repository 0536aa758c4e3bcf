#!/usr/bin/env bash
# README command 1: set up .venv, then train, export, serve and demo the two AdaMix mixtures (reuses what is built).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/adamix-models list
exec .venv/bin/adamix-quickstart "$@"
