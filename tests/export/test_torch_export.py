"""`exporters.onnx_export` (torch.onnx.export) on tiny random models: optimum's graph interface, fp32 parity of
encoders (BERT, RoBERTa, DistilBERT) after the optimiser and their int8 copies, and decoders with the key/value
cache: an empty cache, decode steps, and a left-padded batch whose rows get the logits they get alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from adamix_deploy.exporters.onnx_export import export_onnx
from adamix_deploy.exporters.optimize import optimize_graph
from adamix_deploy.exporters.quantize import quantize_model
from adamix_deploy.serving.engine.onnx_loops import classify_logits, empty_cache, open_session

from helpers.models import bpe_tokenizer, wordpiece_tokenizer

TEXTS = ["a fine and warm film", "dull", "not bad at all , really not bad"]


def _encoder(family: str):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    tokenizer = wordpiece_tokenizer()
    size = {"vocab_size": len(tokenizer), "num_labels": 3, "pad_token_id": tokenizer.pad_token_id}
    if family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **size)
        return DistilBertForSequenceClassification(config).eval(), tokenizer
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **size)
    if family == "roberta":
        tokenizer.model_input_names = ["input_ids", "attention_mask"]  # as RobertaTokenizerFast emits
        return RobertaForSequenceClassification(
            RobertaConfig(max_position_embeddings=70, **common)
        ).eval(), tokenizer
    return BertForSequenceClassification(BertConfig(max_position_embeddings=64, **common)).eval(), tokenizer


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_encoders_export_optimum_interface_with_fp32_parity_and_an_int8_copy(family, tmp_path):
    model, tokenizer = _encoder(family)
    raw = export_onnx(model, tokenizer, "classification", tmp_path / "raw", 18)
    assert not model.training  # the exporter leaves the model as it came
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in raw.parent.iterdir()}
    fusions = optimize_graph(raw, tmp_path / "model.onnx", model.config.model_type, 2, 32)
    assert fusions.get("SkipLayerNormalization") == 4, fusions
    if family == "bert":  # optimum's MiniLM graph had these too: one attention per layer, the embedding fused
        assert fusions.get("Attention") == 2 and fusions.get("EmbedLayerNormalization") == 1, fusions
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if family == "bert" else [])
    assert [i.name for i in graph.input] == expected
    for i in graph.input:
        dims = [d.dim_param for d in i.type.tensor_type.shape.dim]
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64 and dims == ["batch_size", "sequence_length"]
    assert [o.name for o in graph.output] == ["logits"]

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**{k: v for k, v in batch.items() if k in expected}).logits.numpy()
    numpy_batch = {k: v.numpy() for k, v in batch.items()}
    logits = classify_logits(open_session(tmp_path / "model.onnx"), numpy_batch)
    assert np.abs(logits - reference).max() <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).all()
    settings = quantize_model(tmp_path / "model.onnx", tmp_path / "model_int8.onnx", "int8", "classification")
    assert settings["per_channel"] is True
    int8 = classify_logits(open_session(tmp_path / "model_int8.onnx"), numpy_batch)
    assert int8.shape == reference.shape and np.abs(int8 - reference).max() < 0.1


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    eos = tokenizer.eos_token_id
    size = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
    config = GPT2Config(vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=eos, **size)
    model = GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("gpt2")
    raw = export_onnx(model, tokenizer, "generation", folder / "raw", 18)
    assert not model.training
    optimize_graph(raw, folder / "model.onnx", "gpt2", 2, 32)
    return model, folder


def _run(session, ids, mask, positions, past):
    outputs = [o.name for o in session.get_outputs()]
    feed = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
            "position_ids": np.asarray(positions, np.int64), **past}  # fmt: skip
    return dict(zip(outputs, session.run(outputs, feed), strict=True))


def _presents(out: dict) -> dict:
    return {k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")}


def test_a_decoder_graph_has_optimums_cache_interface(gpt2_export):
    _, folder = gpt2_export
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in (folder / "raw").iterdir()
    }
    graph = onnx.load(str(folder / "model.onnx")).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in graph.input}
    outputs = {o.name: dims(o) for o in graph.output}
    cache = [f"{i}.{kind}" for i in range(2) for kind in ("key", "value")]
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{n}" for n in cache
    ]
    assert list(outputs) == ["logits"] + [f"present.{n}" for n in cache]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert inputs["past_key_values.0.key"] == ["batch_size", 2, "past_sequence_length", 16]
    assert outputs["present.1.value"] == ["batch_size", 2, "past_sequence_length + sequence_length", 16]
    assert outputs["logits"][:2] == ["batch_size", "sequence_length"]


def test_a_decoder_prefills_from_an_empty_cache_and_decodes_like_pytorch(gpt2_export):
    model, folder = gpt2_export
    session = open_session(folder / "model.onnx")
    prompt = [5, 17, 42, 8, 9]
    out = _run(session, [prompt], [[1] * 5], [list(range(5))], empty_cache(session))
    step = _run(session, [[7]], [[1] * 6], [[5]], _presents(out))
    with torch.no_grad():
        reference = model(torch.tensor([prompt + [7]])).logits.numpy()
    assert np.abs(out["logits"][0] - reference[0, :5]).max() <= 1e-4
    assert np.abs(step["logits"][0, -1] - reference[0, -1]).max() <= 1e-4


def test_a_left_padded_batch_gives_each_row_its_logits_alone(gpt2_export):
    _, folder = gpt2_export
    session = open_session(folder / "model.onnx")
    rows = [[5, 17, 42, 8, 9], [3, 4], [11, 12, 13]]
    alone = []
    for row in rows:
        n = len(row)
        out = _run(session, [row], [[1] * n], [list(range(n))], empty_cache(session))
        step = _run(session, [[7]], [[1] * (n + 1)], [[n]], _presents(out))
        alone.append((out["logits"][0, -1], step["logits"][0, -1]))
    width = max(map(len, rows))
    pad = [width - len(r) for r in rows]
    ids = [[0] * p + r for p, r in zip(pad, rows, strict=True)]
    mask = [[0] * p + [1] * len(r) for p, r in zip(pad, rows, strict=True)]
    positions = [[0] * p + list(range(len(r))) for p, r in zip(pad, rows, strict=True)]
    batch_cache = {k: np.repeat(v, len(rows), axis=0) for k, v in empty_cache(session).items()}
    out = _run(session, ids, mask, positions, batch_cache)
    assert not np.isnan(out["logits"]).any()  # the padded positions too: their values feed later layers
    step = _run(session, [[7]] * len(rows), [m + [1] for m in mask], [[len(r)] for r in rows], _presents(out))
    for index, (prefill, decode) in enumerate(alone):
        np.testing.assert_allclose(out["logits"][index, -1], prefill, atol=1e-5)
        np.testing.assert_allclose(step["logits"][index, -1], decode, atol=1e-5)
