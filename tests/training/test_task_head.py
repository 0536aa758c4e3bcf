"""Starting from a model folder that already has a task head (a fine-tuned classifier): the head always trains
and is stored in the checkpoint, as PEFT's ``modules_to_save`` trains a classifier; a head of the wrong shape is
re-initialised with one notice line; ``--freeze-head`` keeps a fitting head frozen."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.cli import run
from helpers.data import similarity_rows, write_table
from helpers.models import save_model, wordpiece_tokenizer

pytestmark = pytest.mark.integration

HEAD = ["classifier.bias", "classifier.weight"]


@pytest.fixture(scope="module")
def two_label_classifier(tmp_path_factory):
    """A tiny BERT sequence classifier with a (random, "fine-tuned") 2-label head."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    tokenizer = wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        num_labels=2)  # fmt: skip
    model = BertForSequenceClassification(config)
    return save_model(
        model, tokenizer, tmp_path_factory.mktemp("classifier")
    ), model.classifier.weight.detach().clone()


def train(folder, train_file, output, *extra, check=True):
    return run("adamix-train", "--model", folder, "--train-file", train_file, "--method", "lora", "--experts", "2",
               "--epochs", "1", "--quiet", "--output", output, *extra, check=check, debug=check)  # fmt: skip


def stored(output) -> dict:
    return load_file(output / "mixture.safetensors")


def test_a_head_of_another_shape_is_reinitialised_with_one_notice(two_label_classifier, tmp_path):
    folder, _ = two_label_classifier
    train_file = write_table(tmp_path / "train.tsv", similarity_rows(32, 1))
    result = train(folder, train_file, tmp_path / "run", "--task", "regression")
    notices = [line for line in result.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "re-initialised classifier.bias, classifier.weight (now 1 output)" in notices[0]
    config = json.loads((tmp_path / "run" / "adamix_config.json").read_text())
    assert set(HEAD) <= set(config["head"])
    assert stored(tmp_path / "run")["classifier.weight"].shape == (1, 32)
    run("adamix-export", "--merge", tmp_path / "run", "--output", tmp_path / "deploy", "--verify-file", train_file)
    manifest = json.loads((tmp_path / "deploy" / "adamix_manifest.json").read_text())
    assert (
        manifest["task"] == "regression" and manifest["parity"]["stages"]["onnx_fp32"]["max_abs_logit_diff"] < 1e-4
    )


def test_a_fitting_head_trains_and_is_stored(two_label_classifier, sentiment_files, tmp_path):
    folder, original = two_label_classifier
    result = train(folder, sentiment_files[0], tmp_path / "run", "--task", "classification")
    assert "notice:" not in result.stderr
    weights = stored(tmp_path / "run")
    assert set(HEAD) <= set(weights)
    assert not torch.equal(weights["classifier.weight"], original)  # it trained


def test_freeze_head_keeps_a_fitting_head(two_label_classifier, sentiment_files, tmp_path):
    from adamix_deploy.checkpoint import load_checkpoint

    folder, original = two_label_classifier
    train(folder, sentiment_files[0], tmp_path / "run", "--task", "classification", "--freeze-head",
          "--no-train-pooler")  # fmt: skip
    assert not set(HEAD) & set(stored(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "adamix_config.json").read_text())["head"] == []
    model = load_checkpoint(tmp_path / "run").model
    assert torch.equal(model.classifier.weight, original)


def test_freeze_head_refuses_a_head_that_does_not_fit(two_label_classifier, tiny_bert, tmp_path):
    folder, _ = two_label_classifier
    train_file = write_table(tmp_path / "train.tsv", similarity_rows(16, 1))
    for model, why in (
        (folder, "classifier.bias, classifier.weight do not fit"),
        (tiny_bert, "the folder has no classifier.bias"),
    ):
        result = train(model, train_file, tmp_path / "run", "--task", "regression", "--freeze-head", check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "--freeze-head" in lines[0] and why in lines[0]
        assert not (tmp_path / "run").exists()
