"""What every arm of the generation frontier shares: the model, the test prompts as token ids, their references,
and the two result files. Every backend gets the same ids (from the export's ``tokenizer.json`` with the prompt
template applied, as the server lays a prompt out) and returns token ids; text and BLEU are made in one place
(`scoring`).

- Model: SmolLM2-135M-Instruct with a LoRA trained by the issue-10 E2E recipe (`nlg-lora`, one module, 512
  seeded devset pairs, 1 epoch = 64 steps, lr 2e-3, seed 0), merged and exported by ``adamix-export``.
- Test set: the 200 test MRs of `benchmarks.adamix_quality.e2e` (split seed 20261124), all their references.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common.paths import RESULTS, WORK

FRONTIER = WORK / "frontier"  # git-ignored: checkpoint, export, variants, GGUF files
CHECKPOINT = FRONTIER / "ckpt"
EXPORT = FRONTIER / "export"  # adamix-export --merge CHECKPOINT (builder fp32 graph + merged/ HF folder)
PROMPTS = FRONTIER / "prompts.json"  # [[token ids], ...] one per test MR
REFERENCES = FRONTIER / "references.json"  # [[reference, ...], ...] in the same order
MRS = FRONTIER / "mrs.json"  # the MR texts (what a client of the server sends), in the same order
QUALITY = RESULTS / "frontier_quality.jsonl"  # one line per backend x precision: its greedy outputs (ids)
SPEED = RESULTS / "frontier_speed.jsonl"  # one line per backend x precision x setting: tokens/s, latency, RSS
THREADS = 2
MAX_NEW_TOKENS = 64  # the official E2E eval length


def write_test_set() -> None:
    """prompts.json and references.json from the split and the export's tokenizer and template."""
    from tokenizers import Tokenizer

    from adamix_deploy.contracts.export_folder import read_manifest
    from benchmarks.adamix_quality.e2e import FULL, make_splits

    test = make_splits(FULL)["test"]
    template = read_manifest(EXPORT).prompt_template or "{prompt}"
    tokenizer = Tokenizer.from_file(str(EXPORT / "tokenizer.json"))
    PROMPTS.write_text(json.dumps([tokenizer.encode(template.format(prompt=mr)).ids for mr, _ in test]))
    REFERENCES.write_text(json.dumps([refs for _, refs in test]))
    MRS.write_text(json.dumps([mr for mr, _ in test]))


def prompts() -> list[list[int]]:
    return json.loads(PROMPTS.read_text())


def mrs() -> list[str]:
    return json.loads(MRS.read_text())


def eos_ids(export: Path = EXPORT) -> frozenset[int]:
    """The export's end-of-sequence ids, as the server reads them."""
    from adamix_deploy.serving.engine.model_folder import read_model_folder

    return read_model_folder(export, "fp32").eos_token_ids


def references() -> list[list[str]]:
    return json.loads(REFERENCES.read_text())


def file_mb(paths: list[Path]) -> float:
    """Size on disk of a model's files (a graph and its external data)."""
    return round(sum(p.stat().st_size for p in paths if p.exists()) / 1e6, 1)
