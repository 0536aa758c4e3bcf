"""onnxruntime-genai as the peer of our quantised decoder, run by `benchmarks.decoder_quantization` in a process of
its own, with the project's Python (`[train]` installs onnxruntime-genai) or another environment's. This file imports
nothing of adamix_deploy nor of the benchmarks, and runs as a script.

    .venv/bin/python benchmarks/genai_peer.py build MERGED_HF_FOLDER OUT --threads 2
    .venv/bin/python benchmarks/genai_peer.py speed OUT PROMPTS.json --tokens 32 --repeats 3
    .venv/bin/python benchmarks/genai_peer.py decode OUT PROMPTS.json --max-new-tokens 64

`build` runs genai's own builder (int4, CPU: its defaults, block 32, symmetric, accuracy level 4, one int4 tensor
shared by the embedding and the LM head) on the merged Hugging Face folder of an export and pins the session to
``--threads`` intra-op threads. PROMPTS.json is a list of prompts as token ids (laid out with the template and
tokenised by the export's tokenizer.json, as the server does): genai's own tokenizer misread the tokenizer.json of
checkpoints trained on transformers 4.x (id -1 for "]", "," and spaces in E2E records), and the comparison is of
the models, so every backend gets the same ids and `decode` returns ids. Every command prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "speed", "decode"])
    parser.add_argument("folder")
    parser.add_argument("second")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.command == "build":
        result = build(args.folder, args.second, args.threads)
    elif args.command == "speed":
        result = speed(args.folder, args.second, args.tokens, args.repeats)
    else:
        result = decode(args.folder, args.second, args.max_new_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
