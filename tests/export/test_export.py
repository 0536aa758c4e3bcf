"""adamix-export: export folders, ONNX parity for classification and greedy generation, imports, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.exporters.pipeline import export_checkpoint
from adamix_deploy.importers import detect_and_load
from adamix_deploy.mixture import set_routing
from adamix_deploy.mixture_model import load_tokenizer
from adamix_deploy.serving.engine.onnx_loops import classify_logits, greedy_generate, open_session

from helpers.cli import run
from helpers.models import make_checkpoint


@pytest.mark.parametrize(
    "spec",
    [
        MixtureSpec("lora", experts=3, share="none", rank=4),
        MixtureSpec("adapter", experts=3, share="up", bottleneck=8),
    ],
    ids=["lora", "adapter"],
)
def test_classification_export_folder_and_parity(tiny_bert, tmp_path, spec):
    ckpt = make_checkpoint(tiny_bert, "classification", spec, tmp_path / "ckpt")
    manifest = export_checkpoint(ckpt, tmp_path / "deploy", quantize=("int8",))
    deploy = tmp_path / "deploy"
    assert {"model.onnx", "model_int8.onnx", "config.json", "tokenizer.json", "adamix_manifest.json"} <= {
        p.name for p in deploy.iterdir()
    }
    stages = manifest.parity["stages"]
    assert (
        stages["merged_pytorch"]["max_abs_logit_diff"] <= 1e-4
        and stages["onnx_fp32"]["max_abs_logit_diff"] <= 1e-4
    )
    assert stages["onnx_fp32"]["top1_agreement"] == 1.0 and "onnx_int8" in stages
    assert manifest.merge_method == "average" and manifest.labels == ["0", "1"]
    assert len(manifest.source.sha256) == 64 and manifest.onnx.opset == 18
    assert manifest.files["model.onnx"] == (deploy / "model.onnx").stat().st_size
    # the folder stands alone: onnxruntime + tokenizers reproduce the mixture's average-mode logits
    ref = detect_and_load(ckpt)
    set_routing(ref.model, "average")
    tok = Tokenizer.from_file(str(deploy / "tokenizer.json"))
    enc = tok.encode("the film was good")
    batch = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
             "token_type_ids": np.array([enc.type_ids])}  # fmt: skip
    onnx_logits = classify_logits(open_session(deploy / "model.onnx"), batch)
    with torch.no_grad():
        torch_logits = ref.model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


# the Llama export runs onnxruntime-genai's model builder, a subprocess
@pytest.mark.parametrize("fixture", ["tiny_gpt2", pytest.param("tiny_llama", marks=pytest.mark.integration)])
def test_generation_export_greedy_parity_with_cache(request, fixture, tmp_path):
    path = request.getfixturevalue(fixture)
    ckpt = make_checkpoint(
        path, "generation", MixtureSpec("lora", experts=2, share="none", rank=4), tmp_path / "ckpt"
    )
    manifest = export_checkpoint(ckpt, tmp_path / "deploy", greedy_steps=12)
    stage = manifest.parity["stages"]["onnx_fp32"]
    assert stage["greedy_tokens_identical"] == 1.0 and stage["max_abs_logit_diff"] <= 1e-4
    assert manifest.onnx.with_past is True
    tool = manifest.onnx.tool("fp32").tool
    assert tool.startswith("onnxruntime-genai model builder" if fixture == "tiny_llama" else "torch.onnx.export")
    session = open_session(tmp_path / "deploy" / "model.onnx")
    assert any(i.name.startswith("past_key_values.") for i in session.get_inputs())
    # the cached loop equals full recomputation at every step
    prompt = [5, 17, 42, 8]
    tokens, _ = greedy_generate(session, prompt, 8, eos_token_id=None)
    ref = detect_and_load(ckpt)
    set_routing(ref.model, "average")
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(ref.model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert tokens == ids[len(prompt) :]


def test_delta_average_export_and_merged_folder_loads_with_transformers(tiny_gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = make_checkpoint(
        tiny_gpt2, "generation", MixtureSpec("lora", experts=3, share="none", rank=2), tmp_path / "c"
    )
    manifest = export_checkpoint(ckpt, tmp_path / "deploy", merge_method="delta-average", greedy_steps=6)
    assert manifest.merge_method == "delta-average"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "deploy" / "merged").eval()
    ref = detect_and_load(ckpt)
    set_routing(ref.model, "ensemble")  # the exact mean of the experts' updates
    ids = torch.tensor([[3, 9, 27, 4]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ref.model(ids).logits, rtol=0, atol=1e-4)


def test_peft_import_equals_peft_merge_and_unload(tiny_bert, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    base.save_pretrained(tmp_path / "base")
    load_tokenizer(tiny_bert).save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
        LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "classifier" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(tmp_path / "peft")
    reference = peft_model.merge_and_unload().eval()
    imported = detect_and_load(tmp_path / "peft")
    assert imported.config.source_format == "peft-lora" and imported.config.labels == [
        "LABEL_0",
        "LABEL_1",
        "LABEL_2",
    ]
    ids = torch.tensor([[2, 15, 33, 7, 3]])
    set_routing(imported.model, "average")
    with torch.no_grad():
        torch.testing.assert_close(
            imported.model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0
        )
    manifest = export_checkpoint(tmp_path / "peft", tmp_path / "deploy")
    assert manifest.source.format == "peft-lora"
    assert manifest.parity["stages"]["onnx_fp32"]["top1_agreement"] == 1.0


def test_official_nlu_state_dict_import(tiny_bert, tmp_path):
    """A state dict with the official AdaMix key names imports to the same average-mode model."""
    ckpt = make_checkpoint(tiny_bert, "classification", MixtureSpec("adapter", experts=4, share="up", bottleneck=8),
                           tmp_path / "ckpt")  # fmt: skip
    ours = detect_and_load(ckpt)
    state = {}
    for name, p in ours.model.named_parameters():
        if ".adapter." in name:
            module = name.split(".dense.adapter.")[0]  # bert.encoder.layer.L.output
            field = name.rsplit(".", 1)[1]
            side, kind = {"down_weight": ("A", "weight"), "down_bias": ("A", "bias"),
                          "up_weight": ("B", "weight"), "up_bias": ("B", "bias")}[field]  # fmt: skip
            for j in range(p.shape[0]):
                state[f"{module}.ExpertSoup.MoA_{side}.deepspeed_experts.{j}.{kind}"] = p[j].detach().clone()
            state[f"{module}.ExpertSoup.MoA_A.expert_score_weight"] = torch.zeros(4)
        elif name.startswith("classifier."):
            state[name] = p.detach().clone()
    torch.save(state, tmp_path / "adamix_nlu.bin")
    imported = detect_and_load(tmp_path / "adamix_nlu.bin", base_model=str(tiny_bert))
    assert imported.config.mixture["experts"] == 4 and imported.config.mixture["share"] == "up"
    ids = torch.tensor([[2, 15, 33, 7, 3]])
    for m in (ours.model, imported.model):
        set_routing(m, "average")
    with torch.no_grad():
        torch.testing.assert_close(
            imported.model(input_ids=ids).logits, ours.model(input_ids=ids).logits, rtol=0, atol=1e-6
        )
    with pytest.raises(AdamixError, match="pass --base-model"):
        detect_and_load(tmp_path / "adamix_nlu.bin")


def test_official_gpt2_qv_lora_import(tiny_gpt2, tmp_path):
    """experts_lora_A/B (q and v only, fan-in-fan-out): the merge equals the reference's zero-padded update."""
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    d, r, experts, alpha = 32, 2, 3, 8.0
    state = {"transformer.h.0.attn.c_attn.weight": torch.zeros(1)}  # other keys of the reference are ignored
    for layer in range(2):
        for j in range(experts):
            state[f"transformer.h.{layer}.attn.c_attn.experts_lora_A.{j}"] = torch.randn(2 * r, d, generator=g)
            state[f"transformer.h.{layer}.attn.c_attn.experts_lora_B.{j}"] = torch.randn(2 * d, r, generator=g)
    torch.save({"model_state_dict": state}, tmp_path / "adamix_e2e.pt")
    imported = detect_and_load(tmp_path / "adamix_e2e.pt", base_model=str(tiny_gpt2), lora_alpha=alpha)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    for layer in range(2):
        A = torch.stack(
            [state[f"transformer.h.{layer}.attn.c_attn.experts_lora_A.{j}"] for j in range(experts)]
        ).mean(0)
        B = torch.stack(
            [state[f"transformer.h.{layer}.attn.c_attn.experts_lora_B.{j}"] for j in range(experts)]
        ).mean(0)
        delta_q, delta_v = B[:d] @ A[:r], B[d:] @ A[r:]
        expected = torch.cat([delta_q, torch.zeros(d, d), delta_v]) * (alpha / r)  # (3d, d), then fan-in-fan-out
        with torch.no_grad():
            base.transformer.h[layer].attn.c_attn.weight += expected.T
    ids = torch.tensor([[3, 9, 27, 4]])
    set_routing(imported.model, "average")
    with torch.no_grad():
        torch.testing.assert_close(imported.model(ids).logits, base.eval()(ids).logits, rtol=0, atol=1e-4)
    with pytest.raises(AdamixError, match="pass --lora-alpha"):
        detect_and_load(tmp_path / "adamix_e2e.pt", base_model=str(tiny_gpt2))


def test_pickled_code_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"model_state_dict": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(AdamixError, match="not a weights-only torch file"):
        detect_and_load(tmp_path / "evil.pt", base_model="x")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.integration
def test_bad_inputs_one_line_nonzero_nothing_written(tiny_bert, tiny_gpt2, tmp_path):
    ckpt = make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=2), tmp_path / "ckpt")
    (tmp_path / "exists").mkdir()
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "/nowhere/model", "r": 2, "lora_alpha": 4}))  # fmt: skip
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "weights.txt").write_text("x")
    bad_shape = make_checkpoint(
        tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=2), tmp_path / "bad"
    )
    config = json.loads((bad_shape / "adamix_config.json").read_text())
    config["mixture"]["rank"] = 3
    (bad_shape / "adamix_config.json").write_text(json.dumps(config))
    adapter = make_checkpoint(
        tiny_bert, "classification", MixtureSpec("adapter", experts=2, bottleneck=4), tmp_path / "a"
    )
    cases = {
        "adapter delta-average": (
            [adapter, "--merge-method", "delta-average"],
            "delta-average applies to LoRA only",
        ),
        "missing": ([tmp_path / "nope"], "no such checkpoint"),
        "unknown format": ([tmp_path / "unknown"], "unknown checkpoint format"),
        "peft base missing": ([tmp_path / "peft"], "base model '/nowhere/model' not found"),
        "shape mismatch": ([bad_shape], "has shape"),
        "output exists": ([ckpt, "--output-override", tmp_path / "exists"], "exists: pass --overwrite"),
        "unknown merge method": ([ckpt, "--merge-method", "median"], "unknown merge method"),
    }
    for name, (args, message) in cases.items():
        output = tmp_path / f"out-{name.replace(' ', '-')}"
        if "--output-override" in args:
            output = args[-1]
            args = args[:1]
        result = run("adamix-export", "--merge", *args, "--output", output, check=False, debug=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert name == "output exists" or not output.exists(), name
    assert not any(p.name.startswith(".out-") for p in tmp_path.iterdir())


def test_failed_parity_names_the_stage_and_writes_nothing(tiny_bert, tmp_path, monkeypatch):
    import adamix_deploy.exporters.pipeline as export_module
    from adamix_deploy.merge import merge_mixture_model

    def broken_merge(model, method):  # a merge bug: one folded weight off by a little
        merged = merge_mixture_model(model, method)
        with torch.no_grad():
            merged.classifier.weight[0].add_(0.05)
        return merged

    ckpt = make_checkpoint(tiny_bert, "classification", MixtureSpec("lora", experts=2, rank=2), tmp_path / "ckpt")
    monkeypatch.setattr(export_module, "merge_mixture_model", broken_merge)
    with pytest.raises(AdamixError, match="parity failed at stage merged_pytorch"):
        export_checkpoint(ckpt, tmp_path / "deploy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no export folder, no temporary leftovers


@pytest.mark.integration
def test_adamix_eval_compares_routings(tiny_bert, sentiment_files, tmp_path):
    ckpt = make_checkpoint(
        tiny_bert, "classification", MixtureSpec("lora", experts=3, share="none", rank=2), tmp_path / "c"
    )
    result = run("adamix-eval", ckpt, "--data-file", sentiment_files[1])
    report = json.loads(result.stdout)
    assert list(report["routings"]) == ["average", "ensemble", "random", "expert:0", "expert:1", "expert:2"]
    assert all(r["examples"] == 48 for r in report["routings"].values())
    bad = run(
        "adamix-eval", ckpt, "--data-file", sentiment_files[1], "--routing", "expert:7", check=False, debug=False
    )
    assert bad.returncode == 2 and "expert:7 does not exist" in bad.stderr
