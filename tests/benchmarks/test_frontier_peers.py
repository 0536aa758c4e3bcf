"""The generation frontier's peers (`benchmarks.generation_frontier.peers`) in their --quick mode: each installed
peer decodes and times in processes of its own and records lines of the documented shape; a peer whose
environment is missing is skipped with its one line. PyTorch and onnxruntime-genai run on the tiny
builder-exported Llama; llama.cpp on the frontier's own export, because its converter refuses a tokenizer whose
pre-tokenizer it does not know (the tiny one's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the orchestrator and every peer are processes; the export runs the builder

REPO = Path(__file__).resolve().parents[2]
FRONTIER_EXPORT = REPO / "benchmarks" / "results" / "tmp" / "frontier" / "export"  # generation_frontier.data
QUICK_PROMPTS, QUICK_TOKENS = 4, 8  # peers.QUICK_RUN
BACKENDS = {"torch": "pytorch-generate", "genai": "onnxruntime-genai", "llama": "llama.cpp"}


def peers(step: str, peer: str, export: Path, prompts: Path, results: Path, *more: str) -> str:
    command = [sys.executable, "-m", "benchmarks.generation_frontier.peers", step, "--quick", "--only", peer,
               "--export", str(export), "--prompts", str(prompts), "--results", str(results), *more]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.startswith("skipped:"):
        pytest.skip(out.stdout.strip())
    assert "FAILED" not in out.stdout, out.stdout
    return out.stdout


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_peer(peer: str, export: Path, prompts: Path, results: Path, *more: str) -> list[dict]:
    """decode, speed, then decode again (resumed: nothing new); the lines' shape. Returns the quality lines."""
    peers("decode", peer, export, prompts, results, *more)
    quality = records(results / "quality.jsonl")
    assert quality and all(r["backend"] == BACKENDS[peer] for r in quality)
    for row in quality:
        assert row["key"] == f"{row['backend']}:{row['precision']}"
        assert len(row["outputs"]) == QUICK_PROMPTS
        assert all(len(ids) <= QUICK_TOKENS and all(isinstance(t, int) for t in ids) for ids in row["outputs"])
        assert row["file_mb"] > 0 and row["seconds"] >= 0
        assert row["settings"]["threads"] == 2 and row["settings"]["max_new_tokens"] == QUICK_TOKENS

    peers("speed", peer, export, prompts, results, *more)
    speed = {r["key"]: r for r in records(results / "speed.jsonl")}
    for row in quality:
        for concurrency, rounds in ((1, QUICK_PROMPTS), (8, 1)):  # c1: one rate per prompt; c8: one per round
            line = speed[f"{row['key']}:c{concurrency}"]
            assert line["concurrency"] == concurrency and len(line["rounds"]) == rounds
            assert line["tokens_per_s"] > 0 and line["first_token_ms"] > 0 and line["peak_rss_mib"] > 0
            assert line["load_s"] >= 0 and line["file_mb"] == row["file_mb"]

    peers("decode", peer, export, prompts, results, *more)
    assert len(records(results / "quality.jsonl")) == len(quality)
    return quality


@pytest.mark.parametrize("peer", ["torch", "genai"])
def test_quick_peer_on_a_tiny_export_records_decode_and_speed_lines(peer, exports, tmp_path):
    from tokenizers import Tokenizer

    export = exports["restaurants"]
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    texts = ["name[The Eagle]\n", "name[Blue Spice], food[Italian]\n", "area[riverside]\n", "priceRange[cheap]\n"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([tokenizer.encode(text).ids for text in texts]))
    check_peer(peer, export, prompts, tmp_path / "results")


@pytest.mark.slow
def test_quick_llama_peer_on_the_frontier_export(tmp_path):
    if not (FRONTIER_EXPORT / "adamix_manifest.json").exists():
        pytest.skip(f"no frontier export in {FRONTIER_EXPORT} (python -m benchmarks.generation_frontier build)")
    quality = check_peer("llama", FRONTIER_EXPORT, FRONTIER_EXPORT.parent / "prompts.json", tmp_path / "results",
                         "--precisions", "q8_0")  # fmt: skip
    assert quality[0]["settings"]["llama_tokenizer"]["prompts"] == QUICK_PROMPTS
