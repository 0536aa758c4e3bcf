"""The baseline of `benchmarks.serving_throughput`: the server a user would otherwise write in ten lines (FastAPI +
a transformers pipeline on PyTorch), serving the same merged model folder.

    MODEL_DIR=deploy/sst2/merged uvicorn benchmarks.plain_transformers_server:app --port 8001
"""

import os

import torch
from fastapi import FastAPI
from transformers import pipeline

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
classifier = pipeline("text-classification", model=os.environ["MODEL_DIR"], top_k=None, device="cpu")
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/classify")
def classify(body: dict) -> list:
    return classifier(body["inputs"])
