"""PyTorch `generate` as a peer of the generation frontier: transformers' AutoModelForCausalLM on the export's
merged/ folder (float32), greedy, ``torch.set_num_threads(THREADS)``. A script run in its own process by
`benchmarks.generation_frontier.peers`; it imports nothing of adamix_deploy (peer_timing.py beside it is standard
library only) and prints one JSON object.

    .venv/bin/python benchmarks/generation_frontier/torch_peer.py decode MERGED PROMPTS.json --eos 2 --tokens 64
    .venv/bin/python benchmarks/generation_frontier/torch_peer.py speed MERGED PROMPTS.json --eos 2 --tokens 32
    .venv/bin/python benchmarks/generation_frontier/torch_peer.py speed MERGED PROMPTS.json --eos 2 --tokens 64 \
        --concurrency 8

A batch of several prompts is left-padded with an attention mask (transformers' way for decoder-only models:
generate derives the position ids from the mask), so each new token of a row follows its own prompt.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peer_timing  # noqa: E402  (this script's folder: standard library only)


def load(folder: str, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def settings(model, threads: int) -> dict:
    import torch
    import transformers

    return {"runtime": f"torch {torch.__version__}, transformers {transformers.__version__}", "dtype": "float32",
            "threads": threads, "search": "greedy (do_sample=False, num_beams=1)",
            "attention": model.config._attn_implementation, "batch_padding": "left, attention mask"}  # fmt: skip


def step(model, pad: int, batch: list[list[int]], new_tokens: int, eos: set[int] | None):
    """peer_timing's Step: `generate` on the batch, greedy; exactly ``new_tokens`` each when ``eos`` is None
    (min_new_tokens), else up to the first eos (finished rows are padded until the batch ends)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    started, first = time.perf_counter(), []

    class FirstLogits(LogitsProcessor):  # generate's only hook between the prompt's forward pass and token 1
        def __call__(self, input_ids, scores):
            if not first:
                first.append(time.perf_counter() - started)
            return scores

    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(batch):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    options = {"min_new_tokens": new_tokens} if eos is None else {"eos_token_id": sorted(eos)}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             num_beams=1, pad_token_id=pad, logits_processor=LogitsProcessorList([FirstLogits()]),
                             **options)  # fmt: skip
    return first[0], [row[width:].tolist() for row in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["decode", "speed"])
    parser.add_argument("folder", help="a Hugging Face model folder (the export's merged/)")
    parser.add_argument("prompts", help="a JSON list of prompts as token ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eos", type=int, nargs="+", required=True, help="the ids that end a sequence")
    parser.add_argument("--tokens", type=int, default=64, help="decode: at most; speed: see peer_timing")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = json.loads(Path(args.prompts).read_text())
    started = time.perf_counter()
    model = load(args.folder, args.threads)
    load_seconds = round(time.perf_counter() - started, 2)
    run = functools.partial(step, model, args.eos[0])  # padding is masked: any id pads
    if args.command == "decode":
        result = peer_timing.decode(run, prompts, args.tokens, set(args.eos))
    else:
        result = peer_timing.speed(run, prompts, args.concurrency, args.tokens, set(args.eos), args.repeats)
    print(json.dumps({**result, "load_s": load_seconds, "settings": settings(model, args.threads)}))


if __name__ == "__main__":
    main()
