"""onnxruntime LoRA adapters served over HTTP from a real `adamix-serve`: listed with their base, chosen per request
(route name and the OpenAI `model` field), each equal to its own folded export whatever else runs beside it,
loaded and unloaded at run time under load with nothing lost, and bad adapter files answered with one 4xx."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.export_folder import ADAPTER_FILE, ADAPTERS_FOLDER
from adamix_deploy.exporters.adapter_export import export_adapter, write_adapter_file
from adamix_deploy.exporters.pipeline import export_checkpoint
from adamix_deploy.testing.processes import ServerProcess

from helpers.adapters import reperturb
from helpers.http import PROMPTS, TEXTS, reference_scores
from helpers.models import make_checkpoint

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _lora(rank: int, experts: int = 2) -> MixtureSpec:
    return MixtureSpec("lora", experts=experts, share="none", rank=rank)


@pytest.fixture(scope="module")
def folders(tiny_bert, tiny_llama, tmp_path_factory) -> dict:
    """Two bases (tiny BERT classifiers, tiny Llama generators) with two adapters each, one more adapter of each
    base kept outside it (to load at run time), and every checkpoint's folded export as the reference."""
    root = tmp_path_factory.mktemp("adapters")
    plan = [
        ("nlu", tiny_bert, "classification", "sentiment", _lora(4), ("negative", "positive")),
        ("nlu", tiny_bert, "classification", "topics", _lora(2), ("a", "b", "c")),
        ("nlu", tiny_bert, "classification", "extra", _lora(4), ("no", "yes")),
        ("nlg", tiny_llama, "generation", "eagle", _lora(4), None),
        ("nlg", tiny_llama, "generation", "mill", _lora(2), None),
        ("nlg", tiny_llama, "generation", "extra-gen", _lora(4), None),
        (
            "nlu-bottleneck",
            tiny_bert,
            "classification",
            "bottleneck",
            MixtureSpec("adapter", experts=2, bottleneck=8),
            ("negative", "positive"),
        ),
    ]
    for seed, (base, model, task, name, spec, labels) in enumerate(plan):
        ckpt = make_checkpoint(model, task, spec, root / f"{name}-ckpt", labels=labels or ("0", "1"))
        reperturb(ckpt, seed)  # make_checkpoint always seeds 0: each adapter gets weights of its own
        export_adapter(ckpt, root / base, name=name, greedy_steps=4)
        export_checkpoint(ckpt, root / f"{name}-folded", greedy_steps=4)
    for name, base in (("extra", "nlu"), ("extra-gen", "nlg")):  # served from elsewhere: POST /v1/adapters
        shutil.move(root / base / ADAPTERS_FOLDER / name, root / name)
    (root / "keys").write_text(KEY + "\n")
    return {"root": root}


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    root = folders["root"]
    serve = [root / "nlu", root / "nlg", root / "nlu-bottleneck", root / "sentiment-folded", root / "topics-folded",
             root / "eagle-folded", root / "bottleneck-folded"]  # fmt: skip
    log_dir = tmp_path_factory.mktemp("adapter-server")
    with ServerProcess(serve, "--api-key-file", root / "keys", "--threads", "1", "--max-batch-wait-ms", "5",
                       log_dir=log_dir) as process:  # fmt: skip
        yield process


def _post(server, path, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60, **kw)


def _scores(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([list(r["scores"].values()) for r in response.json()["results"]])


@pytest.mark.integration
def test_the_models_list_shows_each_adapter_with_its_base_and_not_the_bases(server):
    cards = {c["id"]: c for c in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]}
    assert {"sentiment", "topics", "eagle", "mill"} <= set(cards) and not {"nlu", "nlg"} & set(cards)
    assert cards["sentiment"]["parent"] == "nlu" and cards["mill"]["parent"] == "nlg"
    assert cards["topics"]["labels"] == ["a", "b", "c"] and cards["sentiment-folded"]["parent"] is None
    # the generation base has a multi-adapter graph: its adapters run on it, one decode batch for all of them
    assert cards["eagle"]["onnx_file"] == cards["mill"]["onnx_file"] == "model_multi_adapter.onnx"
    assert cards["sentiment"]["onnx_file"] == "model.onnx"


@pytest.mark.integration
def test_each_classification_adapter_equals_its_folded_export_in_a_mixed_concurrent_load(server, folders):
    async def load() -> dict:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client:
            calls = [(name, text) for _ in range(6) for name in ("sentiment", "topics") for text in TEXTS]
            answers = await asyncio.gather(
                *(client.post(f"/v1/models/{name}/classify", json={"inputs": [text]}) for name, text in calls)
            )
        by_model: dict = {}
        for (name, text), answer in zip(calls, answers, strict=True):
            by_model.setdefault(name, {}).setdefault(text, []).append(_scores(answer)[0])
        return by_model

    mixed = asyncio.run(load())
    # an adapter mixture: its merged/ needs adamix's static adapters, so the folded export is the reference
    bottleneck = _scores(_post(server, "/v1/models/bottleneck/classify", {"inputs": TEXTS}))
    folded = _scores(_post(server, "/v1/models/bottleneck-folded/classify", {"inputs": TEXTS}))
    np.testing.assert_allclose(bottleneck, folded, atol=1e-4)
    for name in ("sentiment", "topics"):
        folded = _scores(_post(server, f"/v1/models/{name}-folded/classify", {"inputs": TEXTS}))
        reference = reference_scores(folders["root"] / f"{name}-folded", TEXTS)
        np.testing.assert_allclose(folded, reference, atol=1e-4)
        for row, text in enumerate(TEXTS):
            for scores in mixed[name][text]:  # the same answer whatever ran beside it
                np.testing.assert_allclose(scores, folded[row], atol=1e-4)


@pytest.mark.integration
def test_generation_adapters_are_picked_by_the_openai_model_field_and_match_their_folded_export(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY)

    def complete(model: str, prompt: str) -> str:
        return client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    for prompt in PROMPTS:
        assert complete("eagle", prompt) == complete("eagle-folded", prompt)
    assert [complete("eagle", p) for p in PROMPTS] != [complete("mill", p) for p in PROMPTS]

    async def concurrent() -> list[str]:  # rows of both adapters decoding at once
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            bodies = [("eagle" if i % 2 else "mill", PROMPTS[i % len(PROMPTS)]) for i in range(8)]
            answers = await asyncio.gather(*(
                http.post(f"/v1/models/{m}/generate", json={"prompt": p, "max_new_tokens": 8}) for m, p in bodies
            ))  # fmt: skip
        return [(m, p, a.json()["outputs"][0]["text"]) for (m, p), a in zip(bodies, answers, strict=True)]

    for model, prompt, text in asyncio.run(concurrent()):
        alone = _post(server, f"/v1/models/{model}/generate", {"prompt": prompt, "max_new_tokens": 8}).json()
        assert text == alone["outputs"][0]["text"]


@pytest.mark.integration
def test_adapters_load_and_unload_at_run_time_under_load_and_nothing_in_flight_is_lost(server, folders):
    root = folders["root"]
    loaded = _post(server, "/v1/adapters", {"path": str(root / "extra"), "base": "nlu"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == "extra" and loaded.json()["parent"] == "nlu"
    folded_extra = _post(server, "/v1/models/extra/classify", {"inputs": TEXTS})
    np.testing.assert_allclose(_scores(folded_extra), reference_scores(root / "extra-folded", TEXTS), atol=1e-4)
    gen = _post(server, "/v1/adapters", {"path": str(root / "extra-gen"), "base": "nlg", "name": "gen2"})
    assert gen.status_code == 200 and gen.json()["id"] == "gen2", gen.text

    eagle_alone = _post(server, "/v1/models/eagle/generate", {"prompt": PROMPTS[0], "max_new_tokens": 16}).json()

    async def unload_under_load() -> tuple[list[int], httpx.Response, list[str]]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client:
            inflight = [
                asyncio.create_task(client.post("/v1/models/extra/classify", json={"inputs": TEXTS})) for _ in range(24)
            ] + [
                asyncio.create_task(client.post("/v1/models/gen2/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 16}))
                for _ in range(4)
            ]  # fmt: skip
            # rows of another adapter of the same base decode in the same batch as gen2's while it unloads
            eagle = [
                asyncio.create_task(client.post("/v1/models/eagle/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 16}))
                for _ in range(4)
            ]  # fmt: skip
            await asyncio.sleep(0.05)  # the requests are in
            deleted = await asyncio.gather(client.delete("/v1/adapters/extra"), client.delete("/v1/adapters/gen2"))
            answers = await asyncio.gather(*inflight)
            eagle_texts = [a.json()["outputs"][0]["text"] for a in await asyncio.gather(*eagle)]
        return [a.status_code for a in answers], deleted, eagle_texts

    statuses, deleted, eagle_texts = asyncio.run(unload_under_load())
    assert eagle_texts == [eagle_alone["outputs"][0]["text"]] * 4
    assert all(d.status_code == 200 and d.json()["drained"] for d in deleted), [d.text for d in deleted]
    # every request either finished (it was in before the unload) or was refused whole with 404 (it came after)
    assert set(statuses) <= {200, 404} and statuses.count(200) >= 1
    assert _post(server, "/v1/models/extra/classify", {"inputs": TEXTS}).status_code == 404
    ids = [c["id"] for c in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]]
    assert "extra" not in ids and "gen2" not in ids and "sentiment" in ids
    # loaded again under its name: nothing of the old one is left
    again = _post(server, "/v1/adapters", {"path": str(root / "extra"), "base": "nlu"})
    assert (
        again.status_code == 200
        and httpx.delete(server.url + "/v1/adapters/extra", headers=AUTH).status_code == 200
    )


@pytest.mark.integration
def test_bad_adapter_requests_get_one_4xx_and_the_server_keeps_serving(server, folders, tmp_path):
    root = folders["root"]
    truncated = tmp_path / "truncated"
    shutil.copytree(root / "extra", truncated)
    data = (truncated / ADAPTER_FILE).read_bytes()
    (truncated / ADAPTER_FILE).write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign"  # a tensor the base does not take
    shutil.copytree(root / "extra", foreign)
    write_adapter_file(foreign / ADAPTER_FILE, {"no.such.input": np.zeros((2, 2), np.float32)})
    misshapen = tmp_path / "misshapen"  # the right name, the wrong width
    shutil.copytree(root / "extra", misshapen)
    name = "bert.encoder.layer.0.attention.self.query.lora_a"
    write_adapter_file(misshapen / ADAPTER_FILE, {name: np.zeros((7, 4), np.float32)})
    cases = [
        ({"path": str(tmp_path / "missing"), "base": "nlu"}, 422, "not a folder"),
        ({"path": str(root / "extra-gen"), "base": "nlu"}, 422, "another base graph"),
        ({"path": str(truncated), "base": "nlu"}, 422, "does not read as an onnxruntime adapter"),
        ({"path": str(foreign), "base": "nlu"}, 422, "does not take"),
        ({"path": str(misshapen), "base": "nlu"}, 422, "the base takes"),
        ({"path": str(root / "extra"), "base": "nope"}, 404, "no adapter base"),
        ({"path": str(root / "extra")}, 422, "name one in"),
        ({"path": str(root / "extra"), "base": "nlu", "name": "sentiment"}, 409, "already served"),
        ({"path": str(root / "extra"), "base": "nlu", "extra_field": 1}, 422, ""),
        ({"path": str(root / "extra"), "base": "nlu", "name": "../x"}, 422, "name"),
    ]
    for body, status, message in cases:
        answer = _post(server, "/v1/adapters", body)
        assert answer.status_code == status and message in answer.text, (body, answer.text)
        assert answer.json()["error"]["message"]
    assert (
        httpx.post(server.url + "/v1/adapters", json={"path": str(root / "extra"), "base": "nlu"}).status_code
        == 401
    )
    assert httpx.delete(server.url + "/v1/adapters/sentiment").status_code == 401
    assert httpx.delete(server.url + "/v1/adapters/nothing", headers=AUTH).status_code == 404
    assert httpx.delete(server.url + "/v1/adapters/sentiment-folded", headers=AUTH).status_code == 422
    assert _post(server, "/v1/models/sentiment/classify", {"inputs": TEXTS}).status_code == 200
    assert "Traceback" not in server.log()


@pytest.mark.integration  # its `folders` fixture builds the folded Llama exports with the model builder, a subprocess
def test_the_demo_lists_the_adapters_and_its_card_names_their_base(folders):
    from adamix_deploy.demo.formatting import model_card_markdown
    from adamix_deploy.demo.inprocess_backend import InProcessBackend

    backend = InProcessBackend([folders["root"] / "nlu"])
    cards = {c["id"]: c for c in backend.models()}
    assert set(cards) == {"sentiment", "topics"}
    card = model_card_markdown(cards["topics"])
    assert "| Adapter of | nlu " in card and "| Model | **topics** (classification) |" in card
    result = asyncio.run(_classify_in_process(backend, "topics"))
    assert set(result.scores) == {"a", "b", "c"}


async def _classify_in_process(backend, model: str):
    try:
        return await backend.classify(model, TEXTS[0])
    finally:
        await backend.stop()
