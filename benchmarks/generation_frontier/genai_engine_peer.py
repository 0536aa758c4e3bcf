"""onnxruntime-genai's request `Engine` (0.18) under N closed-loop clients: the peer of our continuous-batching
engine. Runs as a script in an environment with onnxruntime-genai; imports nothing of adamix_deploy.

    python benchmarks/generation_frontier/genai_engine_peer.py FOLDER FILE PROMPTS.json --concurrency 8

Its CPU engine batches up to ``max_batch_size`` requests (``engine.static_batching`` in genai_config.json; 4
when unset). ``engine.dynamic_batching`` (continuous batching over a paged cache) builds on CPU but its first
call fails on the builder's CPU graph ("Invalid rank for input: input_ids Got: 1 Expected: 2": it feeds packed
tokens, which only graphs built for it take), so on CPU a row's slot is freed only when its whole batch has
finished. Prints one JSON object: tokens/s = generated tokens / wall time, as our engine is measured."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ (genai_peer.view)


def run(folder: str, file: str, prompts_file: str, concurrency: int, max_new_tokens: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og
    from genai_peer import view

    scratch = tempfile.mkdtemp(prefix="genai-engine-")
    try:
        path = Path(view(folder, file, threads, f"{scratch}/view"))
        config = json.loads((path / "genai_config.json").read_text())
        config["engine"] = {"static_batching": {"max_batch_size": concurrency}}
        (path / "genai_config.json").write_text(json.dumps(config))
        engine = og.Engine(og.Model(str(path)))
        buffer = engine.create_event_buffer(1024)
        prompts = json.loads(Path(prompts_file).read_text())

        def start(ids: list[int]) -> None:
            request = engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(max_new_tokens)
            options.set_do_sample(False)
            request.begin_turn(np.asarray(ids, dtype=np.int32), options)
            live.append(request)  # the request must stay referenced until it finishes

        live: list = []
        start(prompts[0])  # warm-up
        while engine.has_pending_requests():
            engine.run(buffer)
        live.clear()
        pending, tokens, finished = list(prompts), 0, 0
        began = time.perf_counter()
        for _ in range(min(concurrency, len(pending))):
            start(pending.pop(0))
        while engine.has_pending_requests():
            engine.run(buffer)
            for i in range(len(buffer)):
                event = buffer[i]
                if event.flags & og.EngineEventFlags.TOKEN:
                    tokens += 1
                if event.flags & og.EngineEventFlags.TURN_FINISHED:
                    finished += 1
                    if pending:  # the client sends its next prompt
                        start(pending.pop(0))
        seconds = time.perf_counter() - began
        return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": round(seconds, 2),
                "requests": finished, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "settings": {"runtime": f"onnxruntime-genai {og.__version__} Engine", "file": file,
                             "engine": config["engine"], "intra_op_num_threads": threads}}  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("file")
    parser.add_argument("prompts")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(
        json.dumps(run(args.folder, args.file, args.prompts, args.concurrency, args.max_new_tokens, args.threads))
    )


if __name__ == "__main__":
    main()
