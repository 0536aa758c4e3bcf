"""What the HTTP tests share: the inputs, a JSON POST, independent references (the merged PyTorch model with
the transformers tokenizer), SSE parsing, the error check, a concurrent load generator and a metric reader.
The server they talk to is conftest's session-wide `server` fixture."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

CAP = 40  # the server's --max-new-tokens in these tests
# the options of conftest's `server` (and of the Ray Serve server compared with it); a 5 ms batch wait: tiny models
# answer so fast that requests would rarely overlap on their own
SERVER_OPTIONS = ("--max-new-tokens", str(CAP), "--max-inputs", "8", "--max-body-bytes", "65536", "--threads", "1",
                  "--max-batch-wait-ms", "5")  # fmt: skip
TEXTS = ["the film was great", "awful plot and dull acting", "it was a movie", "superb story, really fine"]
PROMPTS = ["name[The Mill], food[Italian]", "name[Zizzi], food[French]", "name[Aromi], food[Indian]"]


def post(server, path, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def reference_scores(folder: Path, inputs: list) -> np.ndarray:
    """Softmax of the merged PyTorch model (transformers tokenizer and model: nothing shared with the server)."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(folder / "merged").eval()
    rows = []
    for x in inputs:
        enc = tokenizer(*x, return_tensors="pt") if isinstance(x, list) else tokenizer(x, return_tensors="pt")
        with torch.no_grad():
            rows.append(torch.softmax(model(**enc).logits[0].double(), -1).numpy())
    return np.stack(rows)


def reference_greedy(folder: Path, prompt: str, steps: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    model = AutoModelForCausalLM.from_pretrained(folder / "merged").eval()
    ids = tokenizer(prompt + "\n", return_tensors="pt").input_ids  # the export's prompt template
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def error_message(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == status and body["error"]["message"]
    return body["error"]["message"]


async def fire(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(body):
            async with semaphore:
                return await client.post(url, json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


def metric(server, prefix: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0
