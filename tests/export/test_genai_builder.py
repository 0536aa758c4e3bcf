"""Decoders built by onnxruntime-genai's model builder (`exporters.genai_builder`): fp32 / int8 / int4 with
parity, the folder opening in onnxruntime_genai with our greedy tokens, the tokenizer check, the manifest's tool
records, one-line failures, and the choices that keep a decoder off the builder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import GENAI_CONFIG_FILE, OnnxInfo, read_manifest
from adamix_deploy.exporters import genai_builder
from adamix_deploy.exporters.pipeline import export_checkpoint
from adamix_deploy.exporters.quantize import BUILDER_DECODERS
from adamix_deploy.serving.engine.cache_layout import CacheLayout
from adamix_deploy.serving.engine.onnx_loops import greedy_generate, open_session

from helpers.models import make_checkpoint

PROMPTS = ["name[The Mill], food[Italian]\n", "a café and a crêpe", "Blue Spice serves"]


def lora() -> MixtureSpec:
    return MixtureSpec("lora", experts=2, share="none", rank=4)


@pytest.fixture(scope="module")
def built(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    ckpt = make_checkpoint(tiny_llama, "generation", lora(), root / "ckpt")
    manifest = export_checkpoint(ckpt, root / "deploy", quantize=("int8", "int4"), greedy_steps=8)
    return root / "deploy", manifest


@pytest.mark.integration
def test_builder_files_parity_fusions_and_tool_records(built):
    folder, manifest = built
    assert manifest.onnx.models == {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
    for name in manifest.onnx.models.values():
        assert (folder / f"{name}.data").is_file() and f"{name}.data" in manifest.files
    assert manifest.onnx.fusions["GroupQueryAttention"] == 2
    head = any(BUILDER_DECODERS[p].head_bits for p in ("int8", "int4"))
    assert manifest.onnx.fusions["MatMulNBits"] == 10 + head  # 2 layers x (qkv, o, gate, up, down), the LM head
    assert manifest.onnx.fusions["SkipSimplifiedLayerNormalization"] >= 3
    stage = manifest.parity["stages"]["onnx_fp32"]
    assert stage["first_step_max_abs_logit_diff"] <= 1e-4 and stage["greedy_tokens_identical"] == 1.0
    record = manifest.onnx.tool("fp32")
    assert record.tool == f"onnxruntime-genai model builder {genai_builder.builder_version()}"
    assert record.options["precision"] == "fp32" and record.options["extra_options"]["filename"] == "model.onnx"
    # int8 and int4 are quantised from the builder's fp32 graph, not built again
    for precision in ("int8", "int4"):
        record = manifest.onnx.tool(precision)
        assert record.tool == f"onnxruntime.quantization ({manifest.onnx.onnxruntime_version})"
        assert record.options == {"source": "model.onnx", **manifest.onnx.quantization[precision]}
    # the manifest reads back with its new fields
    again = read_manifest(folder)
    assert again.onnx.tools == manifest.onnx.tools and again.onnx.genai == manifest.onnx.genai


@pytest.mark.integration
def test_builder_graphs_take_no_position_ids_and_a_right_padded_cache(built):
    folder, _ = built
    session = open_session(folder / "model.onnx")
    layout = CacheLayout.of(session)
    names = {i.name for i in session.get_inputs()}
    assert layout.padding == "right" and "position_ids" not in names and "attention_mask" in names
    assert {(c.kv_heads, c.head_dim) for c in layout.caches} == {(1, 16)}  # pinned by the exporter
    # right padding by experiment: row 1's cache is padded at the end; each row's logits equal running it alone
    a, b = [5, 17, 42, 99, 3, 250, 7], [11, 12, 13]
    outputs = [o.name for o in session.get_outputs()]

    def run(ids, lengths, width, past):
        feed = {**layout.token_feed(np.asarray(ids, dtype=np.int64), np.asarray(lengths), width), **past}
        return dict(zip(outputs, session.run(outputs, feed), strict=True))

    alone = [run([p], [0], 0, layout.empty()) for p in (a, b)]
    past = {k: np.concatenate([layout.pad(alone[0][k.replace("past_key_values.", "present.")], 7),
                               layout.pad(alone[1][k.replace("past_key_values.", "present.")], 7)])
            for k in layout.past_names}  # fmt: skip
    together = run([[8], [9]], [7, 3], 7, past)
    for row, (prompt, token) in enumerate([(a, 8), (b, 9)]):
        expected = run([prompt + [token]], [0], 0, layout.empty())["logits"][0, -1]
        np.testing.assert_allclose(together["logits"][row, -1], expected, atol=1e-5)
    written = np.abs(together["present.0.key"][1, 0]).sum(-1) != 0
    assert written.tolist() == [True] * 4 + [False] * 4  # row b's new key landed at column len_b = 3


@pytest.mark.integration
def test_the_folder_opens_in_onnxruntime_genai_with_our_greedy_tokens_and_tokenizer(built):
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    folder, manifest = built
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    assert config["model"]["decoder"]["filename"] == "model.onnx"
    assert manifest.onnx.genai["tokenizer"]["genai_tokenizer"] == "same ids"
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = open_session(folder / "model.onnx")
    for prompt in PROMPTS:
        ids = ours.encode(prompt).ids
        assert [int(t) for t in tokenizer.encode(prompt)] == ids
        expected, _ = greedy_generate(session, ids, 10, eos_token_id=None)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 10, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        assert tokens == expected


@pytest.mark.integration
def test_the_tokenizer_check_reports_a_folder_genai_cannot_read_instead_of_failing(built, tmp_path):
    folder, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert genai_builder.check_genai_tokenizer(copy, PROMPTS)["genai_tokenizer"] == "same ids"
    (copy / GENAI_CONFIG_FILE).write_text("{}")
    report = genai_builder.check_genai_tokenizer(copy, PROMPTS)
    assert report["genai_tokenizer"] == "fails" and report["error"]
    assert report["use"].startswith("tokenise with tokenizer.json")


@pytest.mark.integration
def test_a_builder_failure_is_one_line_naming_its_error(tiny_llama, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(tiny_llama, merged)
    (merged / "model.safetensors").unlink()  # config and tokenizer, no weights
    with pytest.raises(AdamixError) as failure:
        genai_builder.build_onnx(merged, tmp_path / "out", ["fp32"], tied=True)
    message = str(failure.value)
    assert message.startswith("onnxruntime-genai's model builder failed (fp32): ") and "\n" not in message
    assert len(message) < 400


def test_fp16_is_refused_in_one_line_for_builder_decoders_before_anything_is_written(tiny_llama, tmp_path):
    ckpt = make_checkpoint(tiny_llama, "generation", lora(), tmp_path / "ckpt")
    with pytest.raises(AdamixError, match="--fp16 is not offered for LlamaForCausalLM"):
        export_checkpoint(ckpt, tmp_path / "deploy", fp16=True)
    assert not (tmp_path / "deploy").exists()


def test_which_decoders_go_to_the_builder(tiny_llama, tiny_gpt2, tmp_path):
    from adamix_deploy.importers import detect_and_load
    from adamix_deploy.merge import merge_mixture_model

    def merged(base, spec, name):
        return merge_mixture_model(
            detect_and_load(make_checkpoint(base, "generation", spec, tmp_path / name)).model
        )

    assert genai_builder.builds(merged(tiny_llama, lora(), "llama"))
    assert not genai_builder.builds(merged(tiny_gpt2, lora(), "gpt2"))  # not a builder architecture
    adapters = MixtureSpec("adapter", experts=2, share="up", bottleneck=4)
    assert not genai_builder.builds(merged(tiny_llama, adapters, "llama-adapters"))  # static adapters


def test_a_manifest_without_tool_records_still_reads():
    old = {"opset": 18, "onnxruntime_version": "1.20.0", "models": {"fp32": "model.onnx"}, "with_past": True}
    info = OnnxInfo(**old)
    assert info.tools == {} and info.genai is None and info.tool("fp32") is None


def test_last_error_line_skips_progress_bars(tmp_path):
    log = tmp_path / "builder.log"
    log.write_text(
        "Reading layer 0\nTraceback (most recent call last):\n  File x\nValueError: shared_embeddings=true "
        "requires a model that ties\nSaving x: 100%|██| 18/18 [00:00<00:00, 2359.15it/s]\n"
    )
    assert genai_builder.last_error_line(log) == "ValueError: shared_embeddings=true requires a model that ties"


def test_without_onnxruntime_genai_a_llama_exports_through_pytorch_and_batches_left_padded(
    tiny_llama, tmp_path, monkeypatch
):
    """Where onnxruntime-genai cannot be imported (a platform without its wheel), every decoder family takes
    PyTorch's exporter."""
    monkeypatch.setattr(genai_builder, "builder_version", lambda: None)
    ckpt = make_checkpoint(tiny_llama, "generation", lora(), tmp_path / "ckpt")
    manifest = export_checkpoint(ckpt, tmp_path / "deploy", quantize=("int8",), greedy_steps=8)
    assert manifest.onnx.tool("fp32").tool.startswith("torch.onnx.export")
    assert manifest.onnx.genai is None and not (tmp_path / "deploy" / GENAI_CONFIG_FILE).exists()
    stage = manifest.parity["stages"]["onnx_fp32"]
    assert stage["first_step_max_abs_logit_diff"] <= 1e-4 and stage["greedy_tokens_identical"] == 1.0
    session = open_session(tmp_path / "deploy" / "model.onnx")
    layout = CacheLayout.of(session)
    assert layout.padding == "left" and layout.takes_positions and layout.can_pad
