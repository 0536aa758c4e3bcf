"""onnxruntime-genai as the peer of our quantised decoder, run by `benchmarks.decoder_quantization` in a process of
its own, with the project's Python (`[train]` installs onnxruntime-genai) or another environment's, and by
`benchmarks.generation_frontier.peers`. It runs as a script and imports nothing of adamix_deploy (its frontier
commands import generation_frontier/peer_timing.py, standard library only).

    .venv/bin/python benchmarks/genai_peer.py build MERGED_HF_FOLDER OUT --threads 2
    .venv/bin/python benchmarks/genai_peer.py speed OUT PROMPTS.json --tokens 32 --repeats 3
    .venv/bin/python benchmarks/genai_peer.py decode OUT PROMPTS.json --max-new-tokens 64
    .venv/bin/python benchmarks/genai_peer.py frontier-decode EXPORT PROMPTS.json --file model_int8.onnx --eos 2 \
        --tokens 64
    .venv/bin/python benchmarks/genai_peer.py frontier-speed EXPORT PROMPTS.json --file model_int8.onnx --eos 2 \
        --tokens 64 --concurrency 8

`build` runs genai's own builder (int4, CPU: its defaults, block 32, symmetric, accuracy level 4, one int4 tensor
shared by the embedding and the LM head) on the merged Hugging Face folder of an export and pins the session to
``--threads`` intra-op threads. PROMPTS.json is a list of prompts as token ids (laid out with the template and
tokenised by the export's tokenizer.json, as the server does): genai's own tokenizer misread the tokenizer.json of
checkpoints trained on transformers 4.x (id -1 for "]", "," and spaces in E2E records), and the comparison is of
the models, so every backend gets the same ids and `decode` returns ids. Every command prints one JSON object.

``--file`` opens one graph with a folder's genai_config.json: one of the folder's (an adamix export holds
model.onnx, model_int8.onnx, model_int4.onnx beside one config) or any other of the same architecture (a
quantised variant); a temporary view folder links the graph, its external data and the folder's other files,
and carries the config with its decoder ``filename`` set to the graph and ``--threads`` intra-op threads.
`frontier-decode` and `frontier-speed` are the generation frontier's protocols (peer_timing.py in
benchmarks/generation_frontier/, standard library only, imported from there): ``--concurrency 8`` decodes 8
prompts in one generator, right-padded with the pad id (genai masks it: each row equalled its batch-1
decoding on 8 prompts x 12 tokens; left padding did not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FRONTIER = Path(__file__).resolve().parent / "generation_frontier"  # peer_timing.py: standard library only


def build(merged: str, out: str, threads: int) -> dict:
    started = time.perf_counter()
    cache = Path(out).parent / (Path(out).name + ".cache")
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", merged, "-o", out, "-p", "int4",
                    "-e", "cpu", "-c", str(cache)], check=True, capture_output=True)  # fmt: skip
    config_path = Path(out) / "genai_config.json"
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    config_path.write_text(json.dumps(config, indent=2))
    size = sum(p.stat().st_size for p in Path(out).iterdir() if p.name.startswith("model.onnx"))
    return {"seconds": round(time.perf_counter() - started, 1), "model_bytes": size}


def _generator(model, ids: list[int], max_new_tokens: int, ignore_eos: bool):
    import numpy as np
    import onnxruntime_genai as og

    ids = np.asarray(ids, dtype=np.int32)
    params = og.GeneratorParams(model)
    options = {"max_length": len(ids) + max_new_tokens, "do_sample": False}
    if ignore_eos:
        options["min_length"] = len(ids) + max_new_tokens
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return generator


def speed(folder: str, prompts_file: str, tokens: int, repeats: int) -> dict:
    import onnxruntime_genai as og

    started = time.perf_counter()
    model = og.Model(folder)
    load_seconds = time.perf_counter() - started
    prompts = json.loads(Path(prompts_file).read_text())
    _decode(model, prompts[0], 4, True)  # warm-up
    rates, firsts = [], []
    for _ in range(repeats):
        for prompt in prompts:
            t = time.perf_counter()
            generator = _generator(model, prompt, tokens + 1, True)
            generator.generate_next_token()  # the prompt's forward pass and the first token
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            count = 0
            while not generator.is_done() and count < tokens:
                generator.generate_next_token()
                count += 1
            rates.append(count / (time.perf_counter() - t))
    return {
        "backend": "onnxruntime-genai-int4", "tokens_per_s": statistics.median(rates),
        "tokens_per_s_runs": [round(r, 2) for r in rates], "first_token_ms": 1000 * statistics.median(firsts),
        "load_s": round(load_seconds, 2), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def _decode(model, prompt: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
    generator = _generator(model, prompt, max_new_tokens, ignore_eos)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def decode(folder: str, prompts_file: str, max_new_tokens: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(folder)
    eos = json.loads((Path(folder) / "genai_config.json").read_text())["model"].get("eos_token_id")
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    outputs = []
    for prompt in json.loads(Path(prompts_file).read_text()):
        tokens = _decode(model, prompt, max_new_tokens)
        outputs.append(tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))])
    return {"tokens": outputs}


def view(folder: str, file: str, threads: int, out: str) -> str:
    """A folder whose genai_config.json (``folder``'s) opens the graph ``file`` (a path, or a name in
    ``folder``) with ``threads`` intra-op threads: links to the graph, its external data under its own name
    (which the graph refers to) and every file of ``folder`` but its graphs and config (the tokenizer)."""
    source, graph = Path(folder).resolve(), (Path(folder) / file).resolve()
    if not graph.is_file():
        raise SystemExit(f"genai_peer: {graph} not found")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "genai_config.json" and ".onnx" not in entry.name:
            (target / entry.name).symlink_to(entry)
    for entry in (graph, graph.with_name(graph.name + ".data")):
        if entry.exists():
            (target / entry.name).symlink_to(entry)
    config = json.loads((source / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = graph.name
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    (target / "genai_config.json").write_text(json.dumps(config, indent=2))
    return str(target)


def _settings(folder: str) -> dict:
    decoder = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"]
    options = decoder.get("session_options", {})
    return {"runtime": f"onnxruntime-genai {_version()}", "file": decoder["filename"], "search": "greedy",
            "intra_op_num_threads": options.get("intra_op_num_threads"), "batch_padding": "right, pad id"}  # fmt: skip


def _version() -> str:
    import onnxruntime_genai as og

    return og.__version__


def _batch_generator(model, batch: list[list[int]], new_tokens: int, pad: int, ignore_eos: bool):
    """One generator over ``batch``, right-padded with ``pad``, each row ``new_tokens`` new positions."""
    import numpy as np
    import onnxruntime_genai as og

    width = max(map(len, batch))
    ids = np.full((len(batch), width), pad, dtype=np.int32)
    for row, prompt in enumerate(batch):
        ids[row, : len(prompt)] = prompt
    options = {"batch_size": len(batch), "max_length": width + new_tokens, "do_sample": False}
    if ignore_eos:
        options["min_length"] = width + new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return generator


def _step(model, pad: int, batch: list[list[int]], new_tokens: int, eos: set[int] | None):
    """peer_timing's Step on genai's own loop: eos (the config's) ends a row unless ``eos`` is None; genai
    ends the generator when every row has ended."""
    started, first = time.perf_counter(), None
    generator = _batch_generator(model, batch, new_tokens, pad, eos is None)
    rows: list[list[int]] = [[] for _ in batch]
    while not generator.is_done():
        generator.generate_next_token()
        if first is None:
            first = time.perf_counter() - started  # the prompts' forward pass and their first tokens
        for row, token in zip(rows, generator.get_next_tokens(), strict=True):
            row.append(int(token))
    return first, rows


def frontier(command: str, folder: str, prompts_file: str, concurrency: int, tokens: int, eos: list[int],
             repeats: int) -> dict:  # fmt: skip
    """The generation frontier's decode or speed protocol (peer_timing) on genai's own generate loop."""
    import functools

    import onnxruntime_genai as og

    sys.path.insert(0, str(FRONTIER))
    import peer_timing

    started = time.perf_counter()
    model = og.Model(folder)
    load_seconds = time.perf_counter() - started
    pad = json.loads((Path(folder) / "genai_config.json").read_text())["model"].get("pad_token_id", 0)
    step = functools.partial(_step, model, pad)
    prompts = json.loads(Path(prompts_file).read_text())
    if command == "frontier-decode":
        result = peer_timing.decode(step, prompts, tokens, set(eos))
    else:
        result = peer_timing.speed(step, prompts, concurrency, tokens, set(eos), repeats)
    return {**result, "load_s": round(load_seconds, 2), "settings": _settings(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "speed", "decode", "frontier-decode", "frontier-speed"])
    parser.add_argument("folder")
    parser.add_argument("second")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--file", help="the graph to open with FOLDER's config (a view folder, --threads)")
    parser.add_argument("--concurrency", type=int, default=1, help="frontier-speed: prompts per generator")
    parser.add_argument("--eos", type=int, nargs="*", default=[], help="frontier-*: the ids that end a sequence")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="genai-view-")
    try:
        folder = view(args.folder, args.file, args.threads, f"{scratch}/view") if args.file else args.folder
        if args.command == "build":
            result = build(args.folder, args.second, args.threads)
        elif args.command == "speed":
            result = speed(folder, args.second, args.tokens, args.repeats)
        elif args.command.startswith("frontier-"):
            result = frontier(args.command, folder, args.second, args.concurrency, args.tokens, args.eos,
                              args.repeats)  # fmt: skip
        else:
            result = decode(folder, args.second, args.max_new_tokens)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
