"""The generation frontier's peers (`benchmarks.generation_frontier.peers`) in their --quick mode on the tiny
builder-exported Llama: each installed peer decodes and times in processes of its own and records lines of the
documented shape; a peer whose environment is missing is skipped with its one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the orchestrator and every peer are processes; the export runs the builder

REPO = Path(__file__).resolve().parents[2]
QUICK_PROMPTS, QUICK_TOKENS = 4, 8  # peers.QUICK_RUN
BACKENDS = {"torch": "pytorch-generate", "genai": "onnxruntime-genai", "llama": "llama.cpp"}


def peers(step: str, peer: str, export: Path, prompts: Path, results: Path) -> str:
    command = [sys.executable, "-m", "benchmarks.generation_frontier.peers", step, "--quick", "--only", peer,
               "--export", str(export), "--prompts", str(prompts), "--results", str(results)]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("peer", list(BACKENDS))
def test_quick_peer_records_decode_and_speed_lines(peer, exports, tmp_path):
    from tokenizers import Tokenizer

    export = exports["restaurants"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    texts = ["name[The Eagle]\n", "name[Blue Spice], food[Italian]\n", "area[riverside]\n", "priceRange[cheap]\n"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([tokenizer.encode(text).ids for text in texts]))
    results = tmp_path / "results"

    said = peers("decode", peer, export, prompts, results)
    if said.startswith("skipped:"):
        pytest.skip(said.strip())
    assert "FAILED" not in said, said
    quality = records(results / "quality.jsonl")
    assert quality and all(r["backend"] == BACKENDS[peer] for r in quality)
    for row in quality:
        assert row["key"] == f"{row['backend']}:{row['precision']}"
        assert len(row["outputs"]) == QUICK_PROMPTS
        assert all(len(ids) <= QUICK_TOKENS and all(isinstance(t, int) for t in ids) for ids in row["outputs"])
        assert row["file_mb"] > 0 and row["seconds"] >= 0
        assert row["settings"]["threads"] == 2 and row["settings"]["max_new_tokens"] == QUICK_TOKENS

    said = peers("speed", peer, export, prompts, results)
    assert "FAILED" not in said, said
    speed = {r["key"]: r for r in records(results / "speed.jsonl")}
    for row in quality:
        for concurrency, rounds in ((1, QUICK_PROMPTS), (8, 1)):  # c1: one rate per prompt; c8: one per round
            line = speed[f"{row['key']}:c{concurrency}"]
            assert line["concurrency"] == concurrency and len(line["rounds"]) == rounds
            assert line["tokens_per_s"] > 0 and line["first_token_ms"] > 0 and line["peak_rss_mib"] > 0
            assert line["load_s"] >= 0 and line["file_mb"] == row["file_mb"]

    peers("decode", peer, export, prompts, results)  # resumes: every key is there, nothing is run again
    assert len(records(results / "quality.jsonl")) == len(quality)
