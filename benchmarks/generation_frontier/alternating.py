"""Our loop against onnxruntime-genai's own generate loop on the same graph, in one process, alternating: the
ratio both see under the same host conditions. Across processes one bare run moved by up to ~15 % (this is a
shared VM), more than the gap between the two, so the frontier's batch-1 comparison of these two is this one.

    python -m benchmarks.generation_frontier.alternating [fp32 int8 int4]   # -> data.SPEED, key "alternating:<p>"

Each round times every one of SPEED_PROMPTS prompts decoding exactly SPEED_TOKENS tokens (prefill included, eos
ignored) with genai, then with ours; a round's figure is each loop's median; the ratio is the median over ROUNDS
of ours / genai within a round.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.common.paths import BENCHMARKS
from benchmarks.common.trials import append_record, read_records
from benchmarks.generation_frontier import data
from benchmarks.generation_frontier.__main__ import SPEED_PROMPTS, SPEED_TOKENS

ROUNDS = 5


def alternate(precision: str) -> dict:
    import onnxruntime_genai as og

    from adamix_deploy.contracts.export_folder import read_manifest
    from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session

    sys.path.insert(0, str(BENCHMARKS))
    from genai_peer import view

    file = read_manifest(data.EXPORT).onnx.models[precision]
    prompts = data.prompts()[:SPEED_PROMPTS]
    scratch = tempfile.mkdtemp(prefix="genai-view-")
    try:
        model = og.Model(view(str(data.EXPORT), file, data.THREADS, f"{scratch}/view"))
        session = open_session(data.EXPORT / file, threads=data.THREADS)

        def genai(ids: list[int], n: int) -> None:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(np.asarray(ids, dtype=np.int32))
            while not generator.is_done():
                generator.generate_next_token()

        def ours(ids: list[int], n: int) -> None:
            greedy_generate(session, ids, n, None)

        def rate(loop) -> float:
            rates = []
            for ids in prompts:
                started = time.perf_counter()
                loop(ids, SPEED_TOKENS)
                rates.append(SPEED_TOKENS / (time.perf_counter() - started))
            return statistics.median(rates)

        genai(prompts[0], 4)
        ours(prompts[0], 4)
        rounds = [(rate(genai), rate(ours)) for _ in range(ROUNDS)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"precision": precision, "file": file, "genai": [round(g, 1) for g, _ in rounds],
            "ours": [round(o, 1) for _, o in rounds],
            "ours_vs_genai": statistics.median(o / g for g, o in rounds)}  # fmt: skip


def main() -> None:
    done = {r["key"] for r in read_records(data.SPEED)}
    for precision in sys.argv[1:] or ["fp32", "int8", "int4"]:
        key = f"alternating:{precision}"
        if key not in done:
            row = alternate(precision)
            append_record(data.SPEED, {"key": key, **row})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
