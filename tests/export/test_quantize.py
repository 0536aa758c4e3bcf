"""Reduced-precision exports: the tied LM head written once, weight-only int8 / int4 decoders (settings in the
manifest, parity that reports divergence), their warning line, serving them, and the encoder int8 choice."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.export_folder import read_manifest
from adamix_deploy.exporters.parity import DecoderStage, generation_parity, reduced_precision_warnings
from adamix_deploy.exporters.pipeline import export_checkpoint
from adamix_deploy.exporters.quantize import BUILDER_DECODERS
from adamix_deploy.exporters.tied_weights import share_tied_lm_head
from adamix_deploy.serving.engine.onnx_loops import open_session
from adamix_deploy.testing.processes import ServerProcess

from helpers.cli import run
from helpers.models import make_checkpoint


def lora() -> MixtureSpec:
    return MixtureSpec("lora", experts=2, share="none", rank=4)  # fresh: injection records its modules in it


def _tiny_tied_graph(embedding: np.ndarray, head: np.ndarray) -> onnx.ModelProto:
    """ids -> Gather(E) -> MatMul(., W) -> logits: a decoder's first and last layer."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "W"], ["logits"], name="/lm_head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", embedding.shape[0]])],
        [numpy_helper.from_array(embedding, "E"), numpy_helper.from_array(head, "W")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _logits(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids}
    )[0]


def test_a_tied_head_becomes_a_fused_matmul_on_the_embedding_with_identical_logits():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(50, 16)).astype(np.float32)
    ids = np.array([[3, 7, 49, 0]], dtype=np.int64)
    model = _tiny_tied_graph(embedding, embedding.T.copy())
    before = _logits(model, ids)
    assert share_tied_lm_head(model) == 1
    assert [i.name for i in model.graph.initializer] == ["E"]
    assert [n.op_type for n in model.graph.node] == ["Gather", "FusedMatMul"]
    np.testing.assert_array_equal(_logits(model, ids), before)
    # a head that is not the embedding's transpose is left alone
    untied = _tiny_tied_graph(embedding, rng.normal(size=(16, 50)).astype(np.float32))
    assert share_tied_lm_head(untied) == 0 and len(untied.graph.initializer) == 2


def _initializers(path) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]


# the Llama export runs onnxruntime-genai's model builder (a subprocess), which shares the tied matrix itself
@pytest.mark.parametrize("fixture", [pytest.param("tiny_llama", marks=pytest.mark.integration), "tiny_gpt2"])
def test_a_tied_decoder_export_holds_its_embedding_once(request, fixture, tmp_path):
    ckpt = make_checkpoint(request.getfixturevalue(fixture), "generation", lora(), tmp_path / "ckpt")
    manifest = export_checkpoint(ckpt, tmp_path / "deploy", greedy_steps=6)
    if fixture == "tiny_llama":
        assert manifest.onnx.fusions["GroupQueryAttention"] == 2
        assert manifest.onnx.tool("fp32").options["extra_options"]["shared_embeddings"] == "true"
    else:
        assert manifest.onnx.fusions["FusedMatMul (tied LM head)"] == 1
    arrays = [a for a in _initializers(tmp_path / "deploy" / "model.onnx") if a.ndim == 2]
    embedding = max(arrays, key=lambda a: a.size)
    copies = [a for a in arrays if a.shape in (embedding.shape, embedding.T.shape)]
    assert len(copies) == 1, [a.shape for a in copies]
    stage = manifest.parity["stages"]["onnx_fp32"]
    assert stage["greedy_tokens_identical"] == 1.0 and stage["max_abs_logit_diff"] <= 1e-4


@pytest.mark.integration  # the model builder runs as a subprocess
def test_weight_only_int8_and_int4_decoders_record_settings_and_parity(tiny_llama, tmp_path):
    ckpt = make_checkpoint(tiny_llama, "generation", lora(), tmp_path / "ckpt")
    manifest = export_checkpoint(
        ckpt, tmp_path / "deploy", quantize=("int8", "int4"), greedy_steps=8, parity_prompts=8
    )
    deploy = tmp_path / "deploy"
    assert manifest.onnx.models == {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
    size = {
        p: manifest.files[name] + manifest.files.get(f"{name}.data", 0) for p, name in manifest.onnx.models.items()
    }
    # no size order on this 32-wide model: block scales outweigh its tiny weights, and a quantised head is a
    # second copy beside the fp32 embedding (SmolLM2's sizes: docs/benchmarks/generation.md)
    assert all(size.values())
    assert manifest.parity["prompts"] == 8
    for precision, bits in (("int8", 8), ("int4", 4)):
        settings, variant = manifest.onnx.quantization[precision], BUILDER_DECODERS[precision]
        assert settings["bits"] == bits and settings["block_size"] == variant.block_size
        assert settings["accuracy_level"] == 4 and settings["algorithm"] == variant.algorithm
        graph = onnx.load(str(deploy / f"model_{precision}.onnx")).graph
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == settings["quantized_matmuls"] > 0
        attributes = {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}
        assert attributes["bits"] == bits and attributes["accuracy_level"] == 4
        assert attributes["block_size"] == variant.block_size
        # the embedding gathers from the fp32 head matrix; the head is its own MatMulNBits where the variant says
        assert settings["embedding"].startswith("fp32, the transposed LM head matrix")
        head = [n for n in graph.node if "logits" in n.output]
        assert [n.op_type for n in head] == ["MatMulNBits" if variant.head_bits else "MatMul"]
        assert settings["lm_head"] == (f"int{variant.head_bits} (its own MatMulNBits weight)" if variant.head_bits
                                       else "fp32 (excluded)")  # fmt: skip
        assert manifest.onnx.tool(precision).options["source"] == "model.onnx"
        stage = manifest.parity["stages"][f"onnx_{precision}"]
        divergence = stage["first_divergence_step"]
        assert len(divergence) == 8 and all(d is None or 0 <= d <= 8 for d in divergence)
        assert stage["greedy_tokens_identical"] == np.mean([d is None for d in divergence])
        assert 0.0 <= stage["next_token_agreement"] <= 1.0 and stage["max_abs_logit_diff"] > 0
    # the warning is printed exactly for the files below the threshold
    for threshold in (0.0, 0.99, 1.0):
        warned = {
            line.split()[1]
            for line in reduced_precision_warnings(manifest.parity, manifest.onnx.models, threshold)
        }
        expected = {
            f"model_{p}.onnx" for p in ("int8", "int4")
            if manifest.parity["stages"][f"onnx_{p}"]["next_token_agreement"] < threshold
        }  # fmt: skip
        assert warned == expected


def _stage(tokens_by_prompt: dict[tuple, list[int]], vocab: int, bias: float = 0.0) -> DecoderStage:
    """A fake decoder: fixed greedy tokens per prompt; logits one-hot on the next token of its own output
    (plus ``bias`` everywhere), so teacher-forced comparisons are known exactly."""

    def logits(sequence: list[int]) -> np.ndarray:
        out = np.full((len(sequence), vocab), bias, dtype=np.float32)
        for position in range(len(sequence) - 1):
            out[position, sequence[position + 1]] += 1.0
        return out

    return DecoderStage(greedy=lambda prompt: tokens_by_prompt[tuple(prompt)], logits=logits)


def test_generation_parity_reports_first_divergence_and_compares_logits_along_the_reference():
    prompts = [[1, 2], [3]]
    reference = _stage({(1, 2): [5, 6, 7], (3,): [8, 9]}, vocab=10)
    other = _stage({(1, 2): [5, 6, 4], (3,): [8, 9]}, vocab=10, bias=0.25)
    report = generation_parity({"ref": reference, "q": other}, prompts, {"q"}, 1e-4, steps=3)
    stage = report["stages"]["q"]
    assert stage["first_divergence_step"] == [2, None] and stage["greedy_tokens_identical"] == 0.5
    assert report["steps_compared"] == (3 + 1) + (2 + 1)
    # along the reference's tokens both fake stages put their one-hot on the same next token: agreement is
    # total even though the free-running greedy outputs part at step 2, and the logits differ by the bias only
    assert stage["next_token_agreement"] == 1.0 and stage["max_abs_logit_diff"] == pytest.approx(0.25)
    assert stage["first_step_max_abs_logit_diff"] == pytest.approx(0.25)
    with pytest.raises(Exception, match="greedy tokens identical for 1/2 prompts"):
        generation_parity({"ref": reference, "q": other}, prompts, set(), 1.0, steps=3)


@pytest.mark.integration
def test_a_quantized_decoder_serves_over_http(tiny_llama, tmp_path):
    ckpt = make_checkpoint(tiny_llama, "generation", lora(), tmp_path / "ckpt")
    export_checkpoint(ckpt, tmp_path / "gen", quantize=("int4",), greedy_steps=4)
    with ServerProcess([tmp_path / "gen"], "--precision", "int4", "--threads", "1", log_dir=tmp_path) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [m["onnx_file"] for m in models] == ["model_int4.onnx"]
        answer = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "gen", "prompt": "name[The Mill]", "max_tokens": 5, "temperature": 0},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1
    session = open_session(tmp_path / "gen" / "model_int4.onnx")
    assert any(i.name.startswith("past_key_values.") for i in session.get_inputs())


@pytest.mark.integration
def test_encoders_get_per_channel_dynamic_int8_and_int4_is_refused_in_one_line(tiny_bert, tmp_path):
    ckpt = make_checkpoint(tiny_bert, "classification", lora(), tmp_path / "ckpt")
    refused = run("adamix-export", "--merge", ckpt, "--output", tmp_path / "int4", "--quantize", "int4", check=False,
                  debug=False)  # fmt: skip
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "int4 is for generation models" in lines[0]
    assert not (tmp_path / "int4").exists()
    done = run("adamix-export", "--merge", ckpt, "--output", tmp_path / "int8", "--quantize", "int8",
               "--warn-agreement", "1.0", check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "int8")
    assert manifest.onnx.quantization["int8"] == {
        "method": "dynamic", "weights": "int8", "per_channel": True, "reduce_range": False
    }  # fmt: skip
    agreement = manifest.parity["stages"]["onnx_int8"]["top1_agreement"]
    assert ("warning: model_int8.onnx" in done.stderr) == (agreement < 1.0)
    assert json.loads(done.stdout)["files"]["model_int8.onnx"] == manifest.files["model_int8.onnx"]
