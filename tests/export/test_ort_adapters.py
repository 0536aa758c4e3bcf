"""onnxruntime LoRA adapters of one shared base graph (`adamix-export --adapter-of`): the merge as LoRA factors,
the base graph's inputs, each adapter equal to its own folded export, the base never rewritten, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.checkpoint_format import read_checkpoint_config
from adamix_deploy.contracts.export_folder import (
    ADAPTER_FILE,
    ADAPTERS_FOLDER,
    read_adapter_manifest,
    read_manifest,
    sha256_file,
)
from adamix_deploy.exporters.adapter_export import export_adapter
from adamix_deploy.exporters.pipeline import export_checkpoint
from adamix_deploy.merge import merged_lora_delta, merged_lora_factors
from adamix_deploy.serving.engine.onnx_loops import ActiveAdapter, classify_logits, greedy_generate, open_session

from helpers.cli import run
from helpers.models import make_checkpoint


@pytest.mark.parametrize("method", ["average", "delta-average", "expert:1"])
@pytest.mark.parametrize("sides", [(3, 3), (3, 1), (1, 3)], ids=["none-shared", "B-shared", "A-shared"])
def test_merged_lora_factors_multiply_to_the_merged_delta(method, sides):
    torch.manual_seed(0)
    lora_a, lora_b = torch.randn(sides[0], 4, 10), torch.randn(sides[1], 6, 4)
    a, b = merged_lora_factors(lora_a, lora_b, method)
    torch.testing.assert_close(b @ a, merged_lora_delta(lora_a, lora_b, method), rtol=1e-5, atol=1e-5)
    both_sides_mixed = method == "delta-average" and min(sides) > 1
    assert a.shape[0] == (4 * 3 if both_sides_mixed else 4)


def _batch(folder, texts):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encoded]),
        "attention_mask": np.array([e.attention_mask for e in encoded]),
        "token_type_ids": np.array([e.type_ids for e in encoded]),
    }


TEXTS = ["a fine and warm film", "dull , slow and long", "not bad at all"]


def test_classifiers_of_different_ranks_and_labels_share_one_base_and_match_their_folded_exports(
    tiny_bert, tmp_path
):
    specs = {
        "sentiment": (MixtureSpec("lora", experts=3, share="up", rank=4), ("negative", "positive")),
        "topics": (MixtureSpec("lora", experts=2, share="none", rank=2), ("a", "b", "c")),
    }
    base = tmp_path / "base"
    for index, (name, (spec, labels)) in enumerate(specs.items()):
        ckpt = make_checkpoint(tiny_bert, "classification", spec, tmp_path / f"{name}-ckpt", labels=labels)
        if index == 1:
            before = sha256_file(base / "model.onnx"), (base / "adamix_manifest.json").read_text()
        method = "delta-average" if name == "topics" else "average"
        manifest, created = export_adapter(ckpt, base, name=name, merge_method=method)
        assert created == (index == 0)
        assert (
            manifest.labels == list(labels)
            and manifest.base_sha256 == read_manifest(base).adapter_base.model_sha256
        )
        stage = manifest.parity["stages"]["onnx_fp32_adapter"]
        assert stage["max_abs_logit_diff"] <= 1e-4 and stage["top1_agreement"] == 1.0
        export_checkpoint(ckpt, tmp_path / f"{name}-folded", merge_method=method)
    # adding the second adapter did not touch the base
    assert (sha256_file(base / "model.onnx"), (base / "adamix_manifest.json").read_text()) == before
    assert read_adapter_manifest(base / ADAPTERS_FOLDER / "topics").ranks  # delta-average of 2x2 experts: rank 4
    assert set(read_adapter_manifest(base / ADAPTERS_FOLDER / "topics").ranks.values()) == {4}

    session = open_session(base / "model.onnx")
    batch = _batch(base, TEXTS)
    for name, (_, labels) in specs.items():
        active = ActiveAdapter(base / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        logits = classify_logits(session, batch, active.run_options)
        folded = classify_logits(open_session(tmp_path / f"{name}-folded" / "model.onnx"), batch)
        assert logits.shape == (len(TEXTS), len(labels))
        np.testing.assert_allclose(logits, folded, atol=1e-4)
    assert classify_logits(session, batch).shape == (len(TEXTS), 0)  # no adapter: the base has no task


EVERY_LAYER = {"tiny_llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
               "tiny_gpt2": ("c_attn", "c_proj", "c_fc")}  # fmt: skip


# the folded Llama export runs onnxruntime-genai's model builder, a subprocess (the adapter base stays on the
# torch path)
@pytest.mark.parametrize("base", [pytest.param("tiny_llama", marks=pytest.mark.integration), "tiny_gpt2"])
def test_a_generation_adapter_decodes_exactly_like_its_folded_export(base, request, tmp_path):
    """The base is made from a checkpoint with LoRA on every layer (so it takes LoRA on every layer: GPT-2's
    attention output is a Gemm in the graph); one on the family's default layers fits it as well."""
    model = request.getfixturevalue(base)
    checkpoints = {
        "every-layer": make_checkpoint(model, "generation", MixtureSpec("lora", experts=2, share="none", rank=4,
                                       targets=EVERY_LAYER[base]), tmp_path / "every-layer-ckpt"),
        "restaurants": make_checkpoint(model, "generation", MixtureSpec("lora", experts=2, share="none", rank=4),
                                       tmp_path / "ckpt"),
    }  # fmt: skip
    base_session = None
    for name, ckpt in checkpoints.items():
        manifest, _ = export_adapter(ckpt, tmp_path / "base", name=name, greedy_steps=6)
        assert manifest.parity["stages"]["onnx_fp32_adapter"]["greedy_tokens_identical"] == 1.0
        export_checkpoint(ckpt, tmp_path / f"{name}-folded", greedy_steps=4)
        base_session = base_session or open_session(tmp_path / "base" / "model.onnx")
        folded = open_session(tmp_path / f"{name}-folded/model.onnx")
        active = ActiveAdapter(tmp_path / "base" / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        prompt = [5, 9, 14, 3]
        tokens, first = greedy_generate(base_session, prompt, 8, None, active.run_options)
        tokens_folded, first_folded = greedy_generate(folded, prompt, 8, None)
        assert tokens == tokens_folded
        np.testing.assert_allclose(first, first_folded, atol=1e-4)
        unadapted, _ = greedy_generate(base_session, prompt, 8, None)
        assert unadapted != tokens  # the adapter changes the model: without it the base model decodes
    lora_layers = {i["module"] for i in read_manifest(tmp_path / "base").adapter_base.inputs}
    every_layer = read_adapter_manifest(tmp_path / "base" / ADAPTERS_FOLDER / "every-layer")
    assert set(every_layer.ranks) == lora_layers and len(lora_layers) == {"tiny_llama": 14, "tiny_gpt2": 8}[base]
    assert len(manifest.ranks) == {"tiny_llama": 4, "tiny_gpt2": 2}[base]  # the defaults: q_proj/v_proj, c_attn


@pytest.mark.integration
def test_bad_adapter_exports_get_one_line_and_leave_the_base_alone(tiny_bert, tiny_llama, tmp_path):
    def lora():  # fresh each time: injection records its modules in the spec
        return MixtureSpec("lora", experts=2, share="none", rank=4)

    ckpt = make_checkpoint(tiny_bert, "classification", lora(), tmp_path / "ckpt")
    base = tmp_path / "base"
    run("adamix-export", "--merge", ckpt, "--adapter-of", base, "--adapter-name", "one")
    digest = sha256_file(base / "model.onnx")
    export_checkpoint(ckpt, tmp_path / "folded")
    adapter_ckpt = make_checkpoint(tiny_bert, "classification", MixtureSpec("adapter", experts=2, bottleneck=8),
                                   tmp_path / "bottleneck")  # fmt: skip
    llama = make_checkpoint(tiny_llama, "generation", lora(), tmp_path / "llama")
    other_targets = make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=4,
                                    targets=("key",)), tmp_path / "key")  # fmt: skip
    # PEFT's modules_to_save may name any layer: a LayerNorm is no adapter input of a base
    layer_norms = _peft_lora_folder(tiny_bert, tmp_path / "layernorm", modules_to_save=("classifier", "LayerNorm"))
    keys = "bert.encoder.layer.0.attention.self.key, bert.encoder.layer.1.attention.self.key, which"
    cases = [
        (("--merge", ckpt, "--adapter-of", base, "--adapter-name", "one"), "exists: pass --overwrite"),
        (("--merge", ckpt, "--adapter-of", base, "--adapter-name", "../escape"), "adapter name"),
        (("--merge", ckpt, "--adapter-of", tmp_path / "folded"), "not a base for adapters"),
        (("--merge", adapter_ckpt, "--adapter-of", base), "no bottleneck input for"),
        (("--merge", llama, "--adapter-of", base), "cannot be an adapter of"),
        (("--merge", other_targets, "--adapter-of", base), f"it adapts {keys} it has no LoRA input for"),
        (
            ("--merge", layer_norms, "--adapter-of", base),
            "it trains bert.embeddings.LayerNorm.bias, bert.embeddings.LayerNorm.weight, bert.encoder.layer.0",
        ),
        (("--merge", ckpt, "--adapter-of", base, "--quantize", "int8"), "does not apply to --adapter-of"),
        (("--merge", ckpt, "--adapter-of", base, "--output", tmp_path / "x"), "either --output"),
        (("--merge", ckpt), "either --output"),
        (("--merge", ckpt, "--output", tmp_path / "y", "--adapter-layers", "all"), "--adapter-layers goes with"),
    ]
    for args, message in cases:
        result = run("adamix-export", *args, check=False, debug=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    triton = run("adamix-triton", base, "--output", tmp_path / "repo", check=False, debug=False)
    assert triton.returncode != 0 and "a base for onnxruntime adapters" in triton.stderr, triton.stderr
    assert not (tmp_path / "repo").exists()
    assert sha256_file(base / "model.onnx") == digest
    assert sorted(p.name for p in (base / ADAPTERS_FOLDER).iterdir()) == ["one"]
    assert json.loads((base / ADAPTERS_FOLDER / "one" / "adapter_manifest.json").read_text())["name"] == "one"


@pytest.mark.integration
def test_a_peft_lora_folder_is_an_adapter_too_and_another_base_models_weights_fail_parity(tiny_bert, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from adamix_deploy.mixture_model import load_tokenizer

    base = tmp_path / "base"
    export_adapter(make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=4),
                                   tmp_path / "ckpt"), base, name="adamix")  # fmt: skip
    for name, model in [
        ("same-base", AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)),
        ("other-base", BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert, num_labels=3))),
    ]:
        model.save_pretrained(tmp_path / name / "base")  # a copy of the base model elsewhere, or another model
        load_tokenizer(tiny_bert).save_pretrained(tmp_path / name / "base")
        peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                      target_modules=["query", "value"]))  # fmt: skip
        with torch.no_grad():
            for parameter_name, p in peft_model.named_parameters():
                if "lora_" in parameter_name or "classifier" in parameter_name:
                    p.normal_(0, 0.3)
        peft_model.save_pretrained(tmp_path / name / "peft")
    manifest, created = export_adapter(tmp_path / "same-base" / "peft", base, name="peft")
    assert not created and manifest.source.format == "peft-lora" and manifest.ranks
    export_checkpoint(tmp_path / "same-base" / "peft", tmp_path / "peft-folded")
    batch = _batch(base, TEXTS)
    active = ActiveAdapter(base / ADAPTERS_FOLDER / "peft" / ADAPTER_FILE)
    np.testing.assert_allclose(
        classify_logits(open_session(base / "model.onnx"), batch, active.run_options),
        classify_logits(open_session(tmp_path / "peft-folded" / "model.onnx"), batch),
        atol=1e-4,
    )
    other = tmp_path / "other-base"
    result = run(
        "adamix-export",
        "--merge",
        other / "peft",
        "--adapter-of",
        base,
        "--adapter-name",
        "peft-other",
        "--base-model",
        other / "base",
        check=False,
        debug=False,
    )
    assert result.returncode != 0 and "parity failed" in result.stderr and "base model the one" in result.stderr
    assert not (base / ADAPTERS_FOLDER / "peft-other").exists() and len(result.stderr.strip().splitlines()) == 1


def test_a_replaced_head_takes_any_label_count_and_runs_empty_without_an_adapter():
    """A RoBERTa-style head (dense hidden x hidden, then out_proj labels x hidden) on a hand-built graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from adamix_deploy.exporters.ort_adapters import HEAD, ReplacedTensor, add_adapter_inputs

    rng = np.random.default_rng(0)
    dense, out = rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wd"], ["h"]), helper.make_node("MatMul", ["h", "Wo"], ["logits"])],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(dense.T.copy(), "Wd"), numpy_helper.from_array(out.T.copy(), "Wo")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    replaced = {
        "dense.weight": ReplacedTensor(dense, HEAD),
        "out_proj.weight": ReplacedTensor(out, HEAD, 0, "labels"),
    }
    inputs = add_adapter_inputs(model, {}, replaced)
    assert {i.name: i.shape for i in inputs if i.kind == HEAD} == {
        "dense.weight": [4, 4],
        "out_proj.weight": [4, "labels"],
    }
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(1, 4)).astype(np.float32)
    five = rng.normal(size=(4, 5)).astype(np.float32)  # another task's head: 5 labels
    logits = session.run(None, {"x": x, "dense.weight": dense.T.copy(), "out_proj.weight": five})[0]
    np.testing.assert_allclose(logits, x @ dense.T @ five, rtol=1e-5)
    assert session.run(None, {"x": x})[0].shape == (1, 0)  # the empty default
    onnx.checker.check_model(model)


def test_bottleneck_adapter_mixtures_of_different_widths_share_one_base_and_match_their_folded_exports(
    tiny_bert, tmp_path
):
    base = tmp_path / "base"
    for name, width in (("wide", 8), ("narrow", 4)):
        spec = MixtureSpec("adapter", experts=3, share="up", bottleneck=width)
        ckpt = make_checkpoint(tiny_bert, "classification", spec, tmp_path / f"{name}-ckpt")
        manifest, _ = export_adapter(ckpt, base, name=name)
        assert set(manifest.ranks.values()) == {width}
        assert manifest.parity["stages"]["onnx_fp32_adapter"]["max_abs_logit_diff"] <= 1e-4
        export_checkpoint(ckpt, tmp_path / f"{name}-folded")
    session, batch = open_session(base / "model.onnx"), _batch(base, TEXTS)
    for name in ("wide", "narrow"):
        active = ActiveAdapter(base / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        folded = classify_logits(open_session(tmp_path / f"{name}-folded" / "model.onnx"), batch)
        np.testing.assert_allclose(classify_logits(session, batch, active.run_options), folded, atol=1e-4)
    # every layer takes LoRA whatever the first checkpoint was: a LoRA mixture fits a bottleneck base too
    lora = make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=4), tmp_path / "lora")
    manifest, _ = export_adapter(lora, base, name="lora")
    assert manifest.parity["stages"]["onnx_fp32_adapter"]["max_abs_logit_diff"] <= 1e-4


def _peft_lora_folder(model_path, folder, targets=("query", "value"), labels=3, modules_to_save=("classifier",)):
    """A PEFT LoRA folder as PEFT writes one for a classifier (LoRA on ``targets``, the classifier trained as a
    ``modules_to_save`` copy, the pooler untouched), with non-trivial weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=labels)
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=list(targets),
                                                  modules_to_save=list(modules_to_save)))  # fmt: skip
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(folder)
    return folder


def _default_recipe_checkpoint(model_path, folder, spec=None, labels=("negative", "positive")):
    """A checkpoint as `adamix-train --method lora` writes it with its default recipe (nlu-lora: 4 experts, B
    shared, r 8, alpha 16, official init, and ``train_pooler``: the pooler's dense layer trains with the head),
    with non-trivial weights (the pooler's included)."""
    spec = spec or MixtureSpec("lora", experts=4, share="up", rank=8, alpha=16.0, init="official")
    make_checkpoint(model_path, "classification", spec, folder, labels, train_pooler=True)
    assert "bert.pooler.dense.bias" in read_checkpoint_config(folder).head
    return folder


def _served_scores(folders, names) -> dict[str, np.ndarray]:
    """Each named model's scores on TEXTS from the serving runtime, in this process, over ``folders``."""
    import asyncio

    from adamix_deploy.demo.inprocess_backend import InProcessBackend

    async def classify() -> dict[str, np.ndarray]:
        backend = InProcessBackend(folders)
        try:
            return {
                name: np.array([list((await backend.classify(name, text)).scores.values()) for text in TEXTS])
                for name in names
            }
        finally:
            await backend.stop()

    return asyncio.run(classify())


def test_a_peft_made_base_takes_a_default_recipe_checkpoint_and_both_serve_like_their_folded_exports(
    tiny_bert, tmp_path
):
    """Issue 22, item 3: a base takes the whole head, pooler included, whichever adapter came first. The PEFT
    adapter leaves the pooler as it is; the default recipe trains it. Tiny BERT's pooler bias is all zeros, as
    are its other biases, and the ONNX exporter writes equal tensors once: the pooler's bias input must not
    feed the layer norms that share its value."""
    peft = _peft_lora_folder(tiny_bert, tmp_path / "peft")
    ours = _default_recipe_checkpoint(tiny_bert, tmp_path / "ours")
    base = tmp_path / "base"
    _, created = export_adapter(peft, base, name="peft")
    manifest, created_again = export_adapter(ours, base, name="ours")
    assert created and not created_again
    assert manifest.parity["stages"]["onnx_fp32_adapter"]["max_abs_logit_diff"] <= 1e-4
    for name, source in (("peft", peft), ("ours", ours)):
        export_checkpoint(source, tmp_path / f"{name}-folded")
    session, batch = open_session(base / "model.onnx"), _batch(base, TEXTS)
    for name in ("peft", "ours"):
        active = ActiveAdapter(base / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        folded = classify_logits(open_session(tmp_path / f"{name}-folded" / "model.onnx"), batch)
        np.testing.assert_allclose(classify_logits(session, batch, active.run_options), folded, atol=1e-4)
    served = _served_scores([base, tmp_path / "peft-folded", tmp_path / "ours-folded"],
                            ["peft", "ours", "peft-folded", "ours-folded"])  # fmt: skip
    for name in ("peft", "ours"):
        np.testing.assert_allclose(served[name], served[f"{name}-folded"], atol=1e-4)
    assert served["peft"].shape == (len(TEXTS), 3) and served["ours"].shape == (len(TEXTS), 2)


@pytest.mark.integration
def test_a_base_takes_lora_on_its_familys_default_or_every_layer_and_the_whole_head_whatever_made_it(
    tiny_bert, tmp_path
):
    """What a base takes is one of two sets of its model's family: the default LoRA layers (query, value) or
    every layer, with the whole head (pooler included) either way. A base made from a PEFT folder takes the
    defaults and refuses more in one line; one made from a checkpoint with LoRA beyond them (key, and the
    pooler: a head layer, folded into the head it brings) takes every layer, as does a PEFT-made base asked
    for every layer; on it, that checkpoint, one with LoRA on every layer of the encoder and a trained pooler,
    and the PEFT folder each serve like their folded exports."""

    def inputs(base):
        return [(i["name"], i["kind"], i["shape"]) for i in read_manifest(base).adapter_base.inputs]

    def modules(base, kind):
        return {i["module"] for i in read_manifest(base).adapter_base.inputs if i["kind"] == kind}

    peft = _peft_lora_folder(tiny_bert, tmp_path / "peft")
    key = make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=4, targets=(
        "key", "pooler.dense")), tmp_path / "key")  # fmt: skip
    spec = MixtureSpec("lora", experts=4, share="up", rank=8, alpha=16.0,
                       targets=("query", "key", "value", r"layer\.\d+\..*dense"))  # fmt: skip
    every = _default_recipe_checkpoint(tiny_bert, tmp_path / "every", spec)
    export_adapter(peft, tmp_path / "peft-base", name="peft")
    export_adapter(key, tmp_path / "base", name="key")
    made = run("adamix-export", "--merge", peft, "--adapter-of", tmp_path / "peft-base-all", "--adapter-name",
               "peft", "--adapter-layers", "all", check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    head = {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    per_layer = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")  # fmt: skip
    assert modules(tmp_path / "peft-base", "head") == modules(tmp_path / "base", "head") == head
    assert modules(tmp_path / "peft-base", "lora_a") == {
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    }
    assert modules(tmp_path / "base", "lora_a") == {
        f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in per_layer
    }
    assert inputs(tmp_path / "base") == inputs(tmp_path / "peft-base-all")

    result = run("adamix-export", "--merge", every, "--adapter-of", tmp_path / "peft-base", check=False,
                 debug=False)  # fmt: skip
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (
        "it adapts bert.encoder.layer.0.attention.output.dense, bert.encoder.layer.0.attention.self.key, "
        "bert.encoder.layer.0.intermediate.dense, bert.encoder.layer.0.output.dense, bert.encoder.layer.1"
        in result.stderr
    )

    session, batch = open_session(tmp_path / "base" / "model.onnx"), _batch(tmp_path / "base", TEXTS)
    for name, ckpt, layers_adapted in (("key", key, 2), ("every", every, 12), ("peft", peft, 4)):
        if name != "key":
            manifest, _ = export_adapter(ckpt, tmp_path / "base", name=name)
        else:
            manifest = read_adapter_manifest(tmp_path / "base" / ADAPTERS_FOLDER / name)
        assert len(manifest.ranks) == layers_adapted
        assert manifest.parity["stages"]["onnx_fp32_adapter"]["max_abs_logit_diff"] <= 1e-4
        export_checkpoint(ckpt, tmp_path / f"{name}-folded")
        active = ActiveAdapter(tmp_path / "base" / ADAPTERS_FOLDER / name / ADAPTER_FILE)
        np.testing.assert_allclose(
            classify_logits(session, batch, active.run_options),
            classify_logits(open_session(tmp_path / f"{name}-folded" / "model.onnx"), batch),
            atol=1e-4,
        )
