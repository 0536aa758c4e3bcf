"""The generation frontier's peers, each run in a process of its own, one after another, on the same merged
model, the same prompt ids and THREADS threads: PyTorch `generate` (fp32, the export's merged/ folder),
onnxruntime-genai's own runtime on our export's builder graphs (fp32, int8, int4) and on every variant graph
under variants/, and llama.cpp through llama-cpp-python on GGUF files converted from the same merged/ folder
(F32, Q8_0 by llama.cpp's convert_hf_to_gguf.py; Q4_1, Q4_K_M quantised from F32 by llama.cpp). Not a test.

    python -m benchmarks.generation_frontier.peers convert          # the GGUF files (llama.cpp's venv)
    python -m benchmarks.generation_frontier.peers decode [--only genai]   # greedy outputs -> data.QUALITY
    python -m benchmarks.generation_frontier.peers speed [--only llama]    # tokens/s etc. -> data.SPEED
    add --precisions fp32 int4 q8_0 ...: only those arms (a variant by its folder name)
    add --quick: 4 prompts x 8 tokens, 1 round, into results/tmp/frontier-quick/ (a check, not a figure)

- Peers: `torch_peer.py` (.venv), `benchmarks/genai_peer.py` (.venv, ``[train]`` installs onnxruntime-genai),
  `llama_peer.py` (.peers/llama, made by ``bash scripts/setup_peers.sh``; a missing peer is skipped with that
  line). None imports adamix_deploy: they share `peer_timing` (standard library), which says the protocols.
- Decode: every test prompt, greedy, at most data.MAX_NEW_TOKENS new tokens, cut at the export's eos ids (the
  server's); one line per backend x precision in data.QUALITY with the ids, seconds, file MB and settings.
- Speed, one line per backend x precision x concurrency in data.SPEED: concurrency 1 is the ``bare`` protocol
  of `benchmarks.generation_frontier` (its SPEED_PROMPTS prompts x SPEED_TOKENS tokens, eos ignored, REPEATS
  rounds); concurrency 8 decodes its CONCURRENT_PROMPTS prompts in static batches of 8 (at most
  MAX_NEW_TOKENS tokens, eos ends a row), the batched API of each runtime, against our engine's 8 clients.
Both steps resume: a key already in the result file is skipped. Run `speed` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common.paths import BENCHMARKS, REPO, WORK
from benchmarks.common.subprocesses import ChildFailed
from benchmarks.common.trials import append_record, read_records
from benchmarks.generation_frontier import data
from benchmarks.generation_frontier.__main__ import CONCURRENT_PROMPTS, REPEATS, SPEED_PROMPTS, SPEED_TOKENS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
LLAMA_PYTHON = REPO / ".peers" / "llama" / "bin" / "python"
CONVERTER = (
    REPO / ".peers" / "sdist" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
)
GGUF_TYPES = ("f32", "q8_0", "q4_1", "q4_k_m")  # f32, q8_0: the converter; the 4-bit ones: quantised from f32
CONCURRENCY = (1, 8)
QUICK = WORK / "frontier-quick"
PEERS = ("torch", "genai", "llama")
MISSING = {"llama": "llama.cpp peer not installed (bash scripts/setup_peers.sh)",
           "genai": "onnxruntime-genai not installed (pip install -e '.[train]')"}  # fmt: skip


@dataclass(frozen=True)
class Protocol:
    """How many prompts and tokens each step uses (the full run's, or --quick's)."""

    decode_prompts: int | None  # None: all
    max_new_tokens: int
    bare_prompts: int
    bare_tokens: int
    batched_prompts: int
    repeats: int
    quality: Path
    speed: Path


FULL = Protocol(None, data.MAX_NEW_TOKENS, SPEED_PROMPTS, SPEED_TOKENS, CONCURRENT_PROMPTS, REPEATS,
                data.QUALITY, data.SPEED)  # fmt: skip
QUICK_RUN = Protocol(4, 8, 4, 8, 8, 1, QUICK / "quality.jsonl", QUICK / "speed.jsonl")


@dataclass(frozen=True)
class Arm:
    """One backend x precision: which Python runs which peer script on which model."""

    backend: str
    precision: str
    python: Path
    script: Path
    model: Path
    files: list[Path]  # what its size counts
    options: list[str] = field(default_factory=list)
    commands: tuple[str, str] = ("decode", "speed")


def available(peer: str) -> bool:
    if peer == "llama":
        check = [str(LLAMA_PYTHON), "-c", "import llama_cpp"]
        return LLAMA_PYTHON.exists() and subprocess.run(check, capture_output=True).returncode == 0
    if peer == "genai":
        import importlib.util

        return importlib.util.find_spec("onnxruntime_genai") is not None
    return True


def graphs(export: Path) -> dict[str, Path]:
    """precision -> graph for genai: the export's builder files and every built variant (variants/<name>/, named
    by its folder, as `benchmarks.generation_frontier.variants` names it; one whose build.json is missing is
    still being written and one whose build.json holds an error has no usable graph)."""
    from adamix_deploy.contracts.export_folder import read_manifest

    found = {p: export / f for p, f in read_manifest(export).onnx.models.items()}
    variants = export.parent / "variants"
    for folder in sorted(variants.iterdir()) if variants.is_dir() else []:
        record = folder / "build.json"
        if not record.exists() or "error" in json.loads(record.read_text()):
            continue
        for graph in sorted(folder.glob("*.onnx")):
            found[folder.name] = graph
    return found


def gguf_folder(export: Path) -> Path:
    return export.parent / "gguf"


def arms(peer: str, export: Path) -> list[Arm]:
    if peer == "torch":
        merged = export / "merged"
        return [Arm("pytorch-generate", "fp32", Path(sys.executable), HERE / "torch_peer.py", merged,
                    sorted(merged.glob("*.safetensors")))]  # fmt: skip
    if peer == "genai":
        return [Arm("onnxruntime-genai", precision, Path(sys.executable), BENCHMARKS / "genai_peer.py", export,
                    [graph, graph.with_name(graph.name + ".data")], ["--file", str(graph)],
                    ("frontier-decode", "frontier-speed"))
                for precision, graph in graphs(export).items()]  # fmt: skip
    folder = gguf_folder(export)
    return [Arm("llama.cpp", kind, LLAMA_PYTHON, HERE / "llama_peer.py", folder / f"model-{kind}.gguf",
                [folder / f"model-{kind}.gguf"]) for kind in GGUF_TYPES if (folder / f"model-{kind}.gguf").exists()]  # fmt: skip


# Outside `speed`: OpenMP threads (torch, llama.cpp) that spin at their barriers crawl beside other jobs
# (llama.cpp with 2 threads: 8 tokens in 60 s against 0.9 s passive). Outputs do not depend on the policy;
# speed keeps each runtime's default, as its users run it, on an idle machine.
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def run_peer(arm: Arm, *args: str | int, env: dict[str, str] | None = None) -> dict:
    """The peer script in a fresh process with THREADS threads; the JSON object on its last line."""
    command = [str(arm.python), str(arm.script), *map(str, args), "--threads", str(data.THREADS)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": str(data.THREADS), **(env or {})})  # fmt: skip
    if out.returncode != 0:
        raise ChildFailed(f"{' '.join(command)} exited with {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def convert(export: Path) -> None:
    """The GGUF files of the export's merged/ folder (each skipped when present)."""
    folder = gguf_folder(export)
    arm = Arm("llama.cpp", "convert", LLAMA_PYTHON, HERE / "llama_peer.py", folder, [])
    result = run_peer(
        arm, "convert", export / "merged", folder, "--converter", CONVERTER, "--types", *GGUF_TYPES, env=PASSIVE
    )
    print(json.dumps(result), flush=True)


def tokenizer_check(arm: Arm, export: Path, prompts: list[list[int]], scratch: Path) -> dict:
    """Whether llama.cpp's own tokenizer (the GGUF's) gives our ids for the prompts' text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    texts = scratch / "texts.json"
    texts.write_text(json.dumps([tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]))
    theirs = run_peer(arm, "tokenize", arm.model, texts, env=PASSIVE)["ids"]
    differ = [i for i, (a, b) in enumerate(zip(prompts, theirs, strict=True)) if a != b]
    return {"identical": len(prompts) - len(differ), "prompts": len(prompts), "first_differing": differ[:5]}


def selected(peer: str, export: Path, precisions: list[str] | None) -> list[Arm]:
    return [arm for arm in arms(peer, export) if not precisions or arm.precision in precisions]


def decode(
    peers: list[str], export: Path, prompts_file: Path, run: Protocol, precisions: list[str] | None
) -> None:
    done = {r["key"] for r in read_records(run.quality)}
    prompts = json.loads(prompts_file.read_text())[: run.decode_prompts]
    eos = sorted(data.eos_ids(export))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "prompts.json"
        path.write_text(json.dumps(prompts))
        for peer in peers:
            for arm in selected(peer, export, precisions):
                key = f"{arm.backend}:{arm.precision}"
                if key in done:
                    continue
                try:
                    result = run_peer(arm, arm.commands[0], arm.model, path, *arm.options, "--tokens",
                                      run.max_new_tokens, "--eos", *eos, env=PASSIVE)  # fmt: skip
                    settings = {**result["settings"], "threads": data.THREADS, "max_new_tokens": run.max_new_tokens,
                                "prompts": len(prompts), "eos": eos, **PASSIVE}  # fmt: skip
                    if peer == "llama":
                        settings["llama_tokenizer"] = tokenizer_check(arm, export, prompts, Path(scratch))
                except ChildFailed as e:
                    print(f"FAILED {key}: {str(e).strip().splitlines()[-1]}", flush=True)
                    continue
                append_record(run.quality, {"key": key, "backend": arm.backend, "precision": arm.precision,
                                            "file_mb": data.file_mb(arm.files), "outputs": result["outputs"],
                                            "seconds": result["seconds"], "settings": settings})  # fmt: skip
                print(f"{key}: {len(prompts)} prompts in {result['seconds']} s", flush=True)


def cycled(prompts: list[list[int]], count: int) -> list[list[int]]:
    """The first ``count`` prompts, repeated when there are fewer (--quick's batch of 8 from 4 prompts)."""
    return (prompts * math.ceil(count / len(prompts)))[:count]


def speed(
    peers: list[str],
    export: Path,
    prompts_file: Path,
    run: Protocol,
    precisions: list[str] | None,
    levels: tuple[int, ...] = CONCURRENCY,
) -> None:
    done = {r["key"] for r in read_records(run.speed)}
    all_prompts = json.loads(prompts_file.read_text())
    eos = sorted(data.eos_ids(export))
    with tempfile.TemporaryDirectory() as scratch:
        for peer in peers:
            for arm in selected(peer, export, precisions):
                for concurrency in levels:
                    key = f"{arm.backend}:{arm.precision}:c{concurrency}"
                    if key in done:
                        continue
                    count, tokens = ((run.bare_prompts, run.bare_tokens) if concurrency == 1
                                     else (run.batched_prompts, run.max_new_tokens))  # fmt: skip
                    path = Path(scratch) / f"prompts-{count}.json"
                    path.write_text(json.dumps(cycled(all_prompts, count)))
                    try:
                        result = run_peer(arm, arm.commands[1], arm.model, path, *arm.options, "--concurrency",
                                          concurrency, "--tokens", tokens, "--repeats", run.repeats, "--eos", *eos)  # fmt: skip
                    except ChildFailed as e:
                        print(f"FAILED {key}: {str(e).strip().splitlines()[-1]}", flush=True)
                        continue
                    protocol = {"prompts": count, "tokens": tokens, "repeats": run.repeats, "threads": data.THREADS,
                                "eos": "ignored" if concurrency == 1 else "ends a row"}  # fmt: skip
                    row = {"key": key, "backend": arm.backend, "precision": arm.precision,
                           "concurrency": concurrency, "file_mb": data.file_mb(arm.files), **result,
                           "settings": {**result.get("settings", {}), **protocol}}  # fmt: skip
                    append_record(run.speed, row)
                    print(key, {k: row[k] for k in ("tokens_per_s", "first_token_ms", "peak_rss_mib")}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation_frontier.peers",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("step", choices=["convert", "decode", "speed"])
    parser.add_argument(
        "--quick", action="store_true", help="4 prompts x 8 tokens into results/tmp/frontier-quick"
    )
    parser.add_argument("--only", choices=PEERS, help="one peer")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="speed: these levels"
    )
    parser.add_argument("--precisions", nargs="+", help="only these precisions (fp32, int4, q8_0, a variant)")
    parser.add_argument("--export", type=Path, default=data.EXPORT, help="the export folder (default: data's)")
    parser.add_argument("--prompts", type=Path, default=data.PROMPTS, help="prompt ids (default: data's)")
    parser.add_argument(
        "--results",
        type=Path,
        help="a folder for quality.jsonl and speed.jsonl instead of "
        "data's (--quick: results/tmp/frontier-quick; the speed rounds: results/tmp/frontier-rounds/rN)",
    )
    options = parser.parse_args()
    if not (options.export / "adamix_manifest.json").exists():
        raise SystemExit(f"no export in {options.export}: run `python -m benchmarks.generation_frontier build`")
    options.export = options.export.resolve()  # the peers run from the repository root, graphs by path
    run = QUICK_RUN if options.quick else FULL
    if options.results:
        run = Protocol(**{**run.__dict__, "quality": options.results / "quality.jsonl",
                          "speed": options.results / "speed.jsonl"})  # fmt: skip
    peers = []
    for peer in [options.only] if options.only else PEERS:
        if available(peer):
            peers.append(peer)
        else:
            print(f"skipped: {MISSING[peer]}", flush=True)
    if "llama" in peers and (options.step == "convert" or len(arms("llama", options.export)) < len(GGUF_TYPES)):
        try:
            convert(options.export)
        except ChildFailed as e:
            print(f"FAILED convert: {str(e).strip().splitlines()[-1]}", flush=True)
    if options.step == "decode":
        decode(peers, options.export, options.prompts, run, options.precisions)
    elif options.step == "speed":
        speed(peers, options.export, options.prompts, run, options.precisions, tuple(options.concurrency))


if __name__ == "__main__":
    main()
