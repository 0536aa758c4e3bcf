"""llama.cpp (through llama-cpp-python) as a peer of the generation frontier. A script run in its own process by
`benchmarks.generation_frontier.peers` with the Python of .peers/llama (``bash scripts/setup_peers.sh``); it
imports nothing of adamix_deploy (peer_timing.py beside it is standard library only) and prints one JSON object.

    .peers/llama/bin/python benchmarks/generation_frontier/llama_peer.py convert MERGED OUT --converter \\
        .peers/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py --types f32 q8_0 q4_1 q4_k_m
    .peers/llama/bin/python benchmarks/generation_frontier/llama_peer.py tokenize MODEL.gguf TEXTS.json
    .peers/llama/bin/python benchmarks/generation_frontier/llama_peer.py decode MODEL.gguf PROMPTS.json --eos 2
    .peers/llama/bin/python benchmarks/generation_frontier/llama_peer.py speed MODEL.gguf PROMPTS.json --eos 2 \\
        --concurrency 8 --tokens 64

`convert` writes OUT/model-<type>.gguf from a Hugging Face folder: f32 and q8_0 by llama.cpp's own
convert_hf_to_gguf.py, the other types by `llama_model_quantize` from the f32 file (its default parameters), each
skipped when present. Decoding feeds our token ids (llama.cpp's tokenizer is only compared, by `tokenize`) to
the low-level batch API on the context of ``Llama(path, n_threads, n_threads_batch, n_ctx=N_CTX,
logits_all=False)`` and takes the argmax of each new logits row (numpy): greedy by construction, with no
sampler chain (penalties, temperature) in between. Several prompts run as one llama_batch per step, one
sequence id each, on a context of ``concurrency`` sequences of N_CTX cells; a row that ends leaves the batch.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peer_timing  # noqa: E402  (this script's folder: standard library only)

N_CTX = 512  # cells per sequence: the longest test prompt and 64 new tokens fit
N_BATCH = 512  # llama.cpp's default: tokens per llama_decode
QUANTIZED = {"q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
             "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}  # fmt: skip


def convert(merged: str, out: str, converter: str, types: list[str], threads: int) -> dict:
    import llama_cpp

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for kind in ["f32", *[t for t in types if t != "f32"]]:  # the quantised types start from f32
        target = folder / f"model-{kind}.gguf"
        if target.exists():
            continue
        partial = target.with_name(target.name + ".partial")  # renamed into place once complete
        started = time.perf_counter()
        if kind in ("f32", "f16", "bf16", "q8_0"):
            out = subprocess.run([sys.executable, converter, merged, "--outtype", kind, "--outfile", str(partial)],
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode != 0:  # e.g. a tokenizer whose pre-tokenizer llama.cpp does not know
                raise SystemExit(
                    f"llama_peer: convert_hf_to_gguf.py failed: {out.stderr.strip().splitlines()[-1]}"
                )
            how = f"convert_hf_to_gguf.py --outtype {kind}"
        else:
            params = llama_cpp.llama_model_quantize_default_params()
            params.nthread = threads
            params.ftype = getattr(llama_cpp, QUANTIZED[kind])
            source = str(folder / "model-f32.gguf").encode()
            if llama_cpp.llama_model_quantize(source, str(partial).encode(), ctypes.byref(params)) != 0:
                raise SystemExit(f"llama_peer: llama_model_quantize to {kind} failed")
            how = f"llama_model_quantize from f32, ftype {QUANTIZED[kind]}, default parameters"
        partial.rename(target)
        made[kind] = {"file": target.name, "mb": round(target.stat().st_size / 1e6, 1), "how": how,
                      "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return {"made": made, "folder": str(folder)}


def tokenize(path: str, texts_file: str) -> dict:
    """llama.cpp's own ids for each text (no BOS added, special tokens parsed, as our tokenizer.json does)."""
    from llama_cpp import Llama

    llama = Llama(model_path=path, vocab_only=True, verbose=False)
    texts = json.loads(Path(texts_file).read_text())
    return {"ids": [llama.tokenize(text.encode(), add_bos=False, special=True) for text in texts]}


class Decoder:
    """Greedy decoding of batches of prompts (token ids) through llama_decode."""

    def __init__(self, path: str, threads: int, concurrency: int) -> None:
        import llama_cpp
        from llama_cpp import Llama

        self.lib = llama_cpp
        self.llama = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=N_CTX,
                           n_batch=N_BATCH, verbose=False, logits_all=False)  # fmt: skip
        self.ctx = self.llama._ctx.ctx
        if concurrency > 1:  # the high-level context holds one sequence: a context of ``concurrency`` instead
            params = llama_cpp.llama_context_params.from_buffer_copy(self.llama.context_params)
            params.n_seq_max, params.n_ctx = concurrency, N_CTX * concurrency
            self.llama._ctx.close()  # freed before the new one is made (peak RSS)
            self.ctx = llama_cpp.llama_init_from_model(self.llama._model.model, params)
            if not self.ctx:
                raise SystemExit("llama_peer: llama_init_from_model failed")
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, concurrency)
        self.n_vocab = self.llama.n_vocab()
        self.concurrency = concurrency

    def settings(self) -> dict:
        import llama_cpp

        return {"runtime": f"llama-cpp-python {llama_cpp.__version__}", "n_threads": self.llama.n_threads,
                "n_threads_batch": self.llama.context_params.n_threads_batch, "n_ctx_per_sequence": N_CTX,
                "n_batch": N_BATCH, "logits_all": False, "search": "argmax of each logits row (numpy)",
                "batching": "one llama_batch per step of every unfinished row, one sequence id each",
                "flash_attn_type": self.llama.context_params.flash_attn_type}  # fmt: skip

    def _argmax(self, index: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        return int(logits.argmax())

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        batch = self.batch
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, logits
        batch.n_tokens = len(entries)
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise SystemExit("llama_peer: llama_decode failed")

    def step(self, prompts: list[list[int]], new_tokens: int, eos: set[int] | None):
        """peer_timing's Step: the prompts' forward passes packed into batches of at most N_BATCH tokens, then
        one batch per new token holding every row that has not ended (eos, when ``eos`` is given, or
        ``new_tokens``)."""
        if len(prompts) > self.concurrency or any(len(p) + new_tokens > N_CTX for p in prompts):
            raise SystemExit(f"llama_peer: at most {self.concurrency} prompts of {N_CTX} tokens with their output")
        started = time.perf_counter()
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        rows: list[list[int]] = [[] for _ in prompts]
        pending = list(enumerate(prompts))
        while pending:
            entries, last = [], []
            while pending and len(entries) + len(pending[0][1]) <= N_BATCH:
                row, prompt = pending.pop(0)
                entries += [(t, p, row, p == len(prompt) - 1) for p, t in enumerate(prompt)]
                last.append((row, len(entries) - 1))
            self._decode(entries)
            for row, index in last:
                rows[row].append(self._argmax(index))
        first = time.perf_counter() - started

        def running(row: int) -> bool:
            return len(rows[row]) < new_tokens and not (eos and rows[row][-1] in eos)

        active = [row for row in range(len(rows)) if running(row)]
        while active:
            self._decode([(rows[r][-1], len(prompts[r]) + len(rows[r]) - 1, r, True) for r in active])
            for i, row in enumerate(active):
                rows[row].append(self._argmax(i))
            active = [row for row in active if running(row)]
        return first, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["convert", "tokenize", "decode", "speed"])
    parser.add_argument("model", help="convert: the Hugging Face folder; otherwise the GGUF file")
    parser.add_argument("second", help="convert: the output folder; tokenize: texts; otherwise prompts (ids)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--converter", help="convert: llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--types", nargs="+", default=["f32", "q8_0", "q4_1", "q4_k_m"])
    parser.add_argument("--eos", type=int, nargs="+", default=[], help="the ids that end a sequence")
    parser.add_argument("--tokens", type=int, default=64, help="decode: at most; speed: see peer_timing")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "convert":
        result = convert(args.model, args.second, args.converter, args.types, args.threads)
    elif args.command == "tokenize":
        result = tokenize(args.model, args.second)
    else:
        started = time.perf_counter()
        decoder = Decoder(args.model, args.threads, args.concurrency)
        load_seconds = round(time.perf_counter() - started, 2)
        prompts = json.loads(Path(args.second).read_text())
        if args.command == "decode":
            result = peer_timing.decode(decoder.step, prompts, args.tokens, set(args.eos))
        else:
            result = peer_timing.speed(decoder.step, prompts, args.concurrency, args.tokens, set(args.eos),
                                       args.repeats)  # fmt: skip
        result = {**result, "load_s": load_seconds, "settings": decoder.settings()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
