#!/usr/bin/env bash
# Batch-1 speed of the frontier's contenders again, in ROUNDS interleaved rounds (each arm a fresh process, the
# arms in the same order every round), so a ratio between two backends is a median of side-by-side pairs: one
# bare run per process varied by up to ~15 % between identical files. Results: results/tmp/frontier-rounds/rN/.
# Run alone on the machine, after `speed`: python -m benchmarks.generation_frontier report reads them.
set -euo pipefail
ROUNDS="${ROUNDS:-3}"
OURS="${OURS:-fp32,int8,int4,int8-b32,int8-b128-head8}"
OUT=benchmarks/results/tmp/frontier-rounds
for round in $(seq 1 "$ROUNDS"); do
  mkdir -p "$OUT/r$round"
  .venv/bin/python -m benchmarks.generation_frontier speed --bare-only --only "$OURS" --results "$OUT/r$round/speed.jsonl"
  .venv/bin/python -m benchmarks.generation_frontier.peers speed --only genai --precisions fp32 int8 int4 --concurrency 1 --results "$OUT/r$round"
  .venv/bin/python -m benchmarks.generation_frontier.peers speed --only llama --precisions q8_0 q4_k_m --concurrency 1 --results "$OUT/r$round"
done
