"""adamix-train and adamix-models as a user runs them: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest

from helpers.cli import run
from helpers.data import write_table

pytestmark = pytest.mark.integration


def test_train_classification_lora_end_to_end(tiny_bert, sentiment_files, tmp_path):
    train_file, dev_file = sentiment_files
    args = ["--model", tiny_bert, "--task", "classification", "--train-file", train_file, "--eval-file", dev_file]
    result = run("adamix-train", *args, "--method", "lora", "--experts", "2", "--epochs", "1", "--quiet",
                 "--output", tmp_path / "run")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["method"] == "lora" and summary["metric"]["name"] == "accuracy"


def test_train_classification_adapter_end_to_end(tiny_bert, sentiment_files, tmp_path):
    train_file, dev_file = sentiment_files
    result = run(
        "adamix-train",
        "--model",
        tiny_bert,
        "--task",
        "classification",
        "--train-file",
        train_file,
        "--eval-file",
        dev_file,
        "--method",
        "adapter",
        "--experts",
        "4",
        "--bottleneck",
        "8",
        "--share",
        "up",
        "--consistency-weight",
        "1.0",
        "--epochs",
        "2",
        "--output",
        tmp_path / "run",
        "--quiet",
    )
    summary = json.loads(result.stdout)
    assert summary["metric"]["name"] == "accuracy" and 0 <= summary["metric"]["value"] <= 1
    assert 0 < summary["trainable_share"] < 1 and summary["trainable_parameters"] > 0
    assert summary["steps"] == 12 and summary["train_seconds"] > 0
    assert result.stderr.count("epoch ") == 2  # an eval line per epoch
    assert {"adamix_config.json", "mixture.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }


@pytest.mark.parametrize(
    ("fixture", "method"), [("tiny_gpt2", "lora"), ("tiny_llama", "lora"), ("tiny_llama", "adapter")]
)
def test_train_generation_end_to_end(request, fixture, method, e2e_files, tmp_path):
    train_file, dev_file = e2e_files
    result = run(
        "adamix-train",
        "--model",
        request.getfixturevalue(fixture),
        "--task",
        "generation",
        "--train-file",
        train_file,
        "--eval-file",
        dev_file,
        "--method",
        method,
        "--experts",
        "2",
        "--rank",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--generate-eval",
        "3",
        "--max-new-tokens",
        "8",
        "--output",
        tmp_path / "run",
        "--quiet",
    )
    summary = json.loads(result.stdout)
    assert summary["metric"]["name"] == "bleu"
    assert set(summary["generation"]) == {"bleu", "rouge_l", "inputs"} and summary["generation"]["inputs"] == 3
    assert summary["eval"]["loss"] > 0
    config = json.loads((tmp_path / "run" / "adamix_config.json").read_text())
    assert config["task"] == "generation" and config["mixture"]["method"] == method


def bad_input_cases(tiny_bert, sentiment_files, tmp_path):
    train_file, dev_file = sentiment_files
    wrong_labels = write_table(tmp_path / "dev3.tsv", [{"sentence": "x", "label": "2"}])
    no_label = write_table(tmp_path / "nolabel.tsv", [{"sentence": "x", "score": "1"}])
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    base = ["--model", tiny_bert, "--task", "classification", "--train-file", train_file]
    return {
        "missing train file": (
            ["--model", tiny_bert, "--task", "classification", "--train-file", tmp_path / "nope.tsv"],
            "no such file",
        ),
        "missing column": (
            ["--model", tiny_bert, "--task", "classification", "--train-file", no_label],
            "no label column: expected one of label (columns: sentence, score)",
        ),
        "wrong text column": ([*base, "--text-column", "review"], "no text column 'review'"),
        "label not in set": ([*base, "--eval-file", wrong_labels], "label '2', not in the label set"),
        "empty data": (
            ["--model", tiny_bert, "--task", "classification", "--train-file", empty],
            "no examples",
        ),
        "rank zero": ([*base, "--method", "lora", "--rank", "0"], "rank must be > 0"),
        "bottleneck zero": ([*base, "--bottleneck", "0"], "bottleneck must be > 0"),
        "no experts": ([*base, "--experts", "0"], "experts must be >= 1"),
        "unknown model": (
            ["--model", "no-such-model", "--task", "classification", "--train-file", train_file],
            "neither a folder nor a packaged model",
        ),
        "bad routing": ([*base, "--eval-routing", "gate"], "unknown routing 'gate'"),
        "missing options": (["--train-file", train_file], "missing --model, --task"),
        "unknown method": ([*base, "--method", "prefix"], "'prefix' is not one of"),
        "head for generation": (
            ["--model", tiny_bert, "--task", "generation", "--train-file", train_file, "--method", "head"],
            "method head trains nothing for generation",
        ),
    }


def test_bad_inputs_give_one_line_and_write_nothing(tiny_bert, sentiment_files, tmp_path):
    for name, (args, message) in bad_input_cases(tiny_bert, sentiment_files, tmp_path).items():
        output = tmp_path / f"out-{name.replace(' ', '-')}"
        result = run("adamix-train", *args, "--output", output, "--quiet", check=False, debug=False)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert lines[0].startswith("adamix-train: error: ")
        assert "Traceback" not in result.stderr
        assert not output.exists(), name


def test_unknown_family_without_targets(tmp_path, sentiment_files):
    from transformers import AutoTokenizer, OPTConfig, OPTForSequenceClassification

    from helpers.models import bpe_tokenizer

    tokenizer = bpe_tokenizer()
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    OPTForSequenceClassification(config).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    assert AutoTokenizer.from_pretrained(tmp_path / "opt")
    args = [
        "--model",
        tmp_path / "opt",
        "--task",
        "classification",
        "--train-file",
        sentiment_files[0],
        "--quiet",
    ]
    result = run("adamix-train", *args, "--method", "lora", "--output", tmp_path / "o1", check=False)
    assert result.returncode == 2 and "unknown model family 'opt': pass --targets" in result.stderr
    assert not (tmp_path / "o1").exists()
    ok = run(
        "adamix-train",
        *args,
        "--method",
        "lora",
        "--targets",
        "q_proj,v_proj",
        "--epochs",
        "1",
        "--output",
        tmp_path / "o2",
    )
    assert json.loads(ok.stdout)["steps"] == 6


def test_existing_output_is_refused_without_overwrite(tiny_bert, sentiment_files, tmp_path):
    args = [
        "--model",
        tiny_bert,
        "--task",
        "classification",
        "--train-file",
        sentiment_files[0],
        "--epochs",
        "1",
        "--quiet",
        "--output",
        tmp_path / "run",
    ]
    run("adamix-train", *args)
    before = (tmp_path / "run" / "mixture.safetensors").read_bytes()
    refused = run("adamix-train", *args, check=False)
    assert refused.returncode == 2 and "exists: pass --resume" in refused.stderr
    assert (tmp_path / "run" / "mixture.safetensors").read_bytes() == before
    run("adamix-train", *args, "--overwrite", "--seed", "7")
    assert (tmp_path / "run" / "mixture.safetensors").read_bytes() != before


def test_resume_from_the_cli(tiny_bert, sentiment_files, tmp_path):
    args = [
        "--model",
        tiny_bert,
        "--task",
        "classification",
        "--train-file",
        sentiment_files[0],
        "--epochs",
        "2",
        "--quiet",
        "--output",
        tmp_path / "run",
    ]
    partial = json.loads(run("adamix-train", *args, "--stop-after", "5").stdout)
    assert partial["complete"] is False and partial["step"] == 5
    done = json.loads(run("adamix-train", "--resume", "--output", tmp_path / "run", "--quiet").stdout)
    assert done["steps"] == 12
    again = run("adamix-train", "--resume", "--output", tmp_path / "run", check=False)
    assert again.returncode == 2 and "already complete" in again.stderr


def test_models_list_names_the_packaged_models():
    result = run("adamix-models", "list")
    assert "minilm" in result.stdout and "smollm2" in result.stdout
    bad = run("adamix-models", "resolve", "nothing-here", check=False)
    assert bad.returncode == 2 and "neither a folder nor a packaged model" in bad.stderr
