"""--select-best: the finished checkpoint holds the weights of the best evaluation (bit for bit those of a run
stopped there), records its step, epoch and score, resumes to the same choice, and refuses what cannot work."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adamix_deploy.checkpoint import load_checkpoint
from adamix_deploy.config import MixtureSpec, TrainOptions
from adamix_deploy.contracts.checkpoint_format import WEIGHTS_NAME, read_checkpoint_config
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.routing_comparison import compare_routings
from adamix_deploy.selection import Selection
from adamix_deploy.train import train

from helpers.cli import run


def options(tiny_bert, sentiment_files, output, **kw) -> TrainOptions:
    """12 steps (2 epochs of 6). The learning rate diverges once the warm-up (half the run) has passed: the
    eval loss at step 2 is far below every later one, so the best is not the last."""
    train_file, dev_file = sentiment_files
    defaults = dict(
        model=str(tiny_bert), task="classification", train_file=str(train_file), eval_file=str(dev_file),
        output=str(output), mixture=MixtureSpec("adapter", experts=3, share="none", bottleneck=4), epochs=2,
        batch_size=16, lr=10.0, warmup_ratio=0.5, select_best="loss", eval_every=2, progress=False,
    )  # fmt: skip
    return TrainOptions(**{**defaults, **kw})


def same_weights(a, b) -> bool:
    x, y = load_file(a / WEIGHTS_NAME), load_file(b / WEIGHTS_NAME)
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_the_checkpoint_holds_the_best_evaluation(tiny_bert, sentiment_files, tmp_path):
    summary = train(options(tiny_bert, sentiment_files, tmp_path / "best"))
    training = read_checkpoint_config(tmp_path / "best").training
    evaluations = training["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4, 6, 8, 10, 12]
    losses = [e["eval"]["loss"] for e in evaluations]
    chosen = training["selection"]
    assert chosen["step"] == 2 and chosen["score"] == min(losses) < min(losses[1:])  # not the last: a real pick
    assert chosen["epoch"] == pytest.approx(2 / 6, abs=1e-3) and chosen["higher_is_better"] is False
    assert summary["selection"] == chosen and summary["eval"] == evaluations[0]["eval"]
    assert summary["steps"] == 12  # the run went on to the end; only the saved weights are the best ones

    # the weights are those of the same run stopped at the chosen step
    train(options(tiny_bert, sentiment_files, tmp_path / "stopped", stop_after=2))
    assert same_weights(tmp_path / "best", tmp_path / "stopped")
    # and scoring the saved checkpoint gives the recorded score
    scored = compare_routings(load_checkpoint(tmp_path / "best"), sentiment_files[1], ["average"])
    assert scored["routings"]["average"]["loss"] == pytest.approx(chosen["score"], rel=1e-6)


def test_resume_makes_the_same_choice(tiny_bert, sentiment_files, tmp_path):
    """Stopped mid-epoch after the best was found: the best weights travel in the training state."""
    straight = train(options(tiny_bert, sentiment_files, tmp_path / "a"))
    partial = train(options(tiny_bert, sentiment_files, tmp_path / "b", stop_after=5))
    assert partial["complete"] is False
    resumed = train(options(tiny_bert, sentiment_files, tmp_path / "b"), resume=True)
    assert resumed["selection"] == straight["selection"]
    assert same_weights(tmp_path / "a", tmp_path / "b")
    a, b = (read_checkpoint_config(tmp_path / x).training for x in "ab")
    assert a["evaluations"] == b["evaluations"] and a["history"] == b["history"]


def test_each_epoch_by_default(tiny_bert, sentiment_files, tmp_path):
    summary = train(options(tiny_bert, sentiment_files, tmp_path / "run", eval_every=0, select_best="accuracy",
                            lr=3e-3))  # fmt: skip
    training = read_checkpoint_config(tmp_path / "run").training
    assert [(e["step"], e["epoch"]) for e in training["evaluations"]] == [(6, 1.0), (12, 2.0)]
    accuracies = [e["eval"]["accuracy"] for e in training["evaluations"]]
    first_best = accuracies.index(max(accuracies))  # a tie keeps the earlier epoch
    assert summary["selection"]["epoch"] == first_best + 1 and summary["metric"]["value"] == max(accuracies)
    assert [h["eval"] for h in training["history"]] == [e["eval"] for e in training["evaluations"]]


def test_selection_rule():
    selection = Selection("accuracy", "classification")
    assert selection.offer(1, 0.5, {"accuracy": 0.6}) and not selection.offer(2, 1.0, {"accuracy": 0.6})
    assert selection.offer(3, 1.5, {"accuracy": 0.7}) and (selection.step, selection.score) == (3, 0.7)
    lowest = Selection("loss", "regression")  # regression's loss is its mean squared error
    assert lowest.offer(1, 1.0, {"mse": 2.0}) and lowest.offer(2, 2.0, {"mse": 1.0})
    assert not lowest.offer(3, 3.0, {"mse": 1.5})
    assert Selection.from_dict(lowest.to_dict()) == lowest


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"select_best": "pearson"}, "--select-best pearson does not apply to classification"),
        ({"select_best": "bleu"}, "--select-best bleu does not apply to classification"),
        ({"select_best": "accuracy", "eval_every": 0, "eval_file": None}, "--select-best needs --eval-file"),
        ({"eval_every": 3, "select_best": None, "eval_file": None}, "--eval-every needs --eval-file"),
        ({"select_best": "top5"}, "select best must be one of"),
    ],
)
def test_impossible_selections_are_refused(tiny_bert, sentiment_files, tmp_path, changes, message):
    with pytest.raises(AdamixError, match=message):
        options(tiny_bert, sentiment_files, tmp_path / "run", **changes)


def test_bleu_needs_decoded_inputs(tiny_gpt2, e2e_files, tmp_path):
    train_file, dev_file = e2e_files
    with pytest.raises(AdamixError, match="give --generate-eval N"):
        TrainOptions(model=str(tiny_gpt2), task="generation", train_file=str(train_file), eval_file=str(dev_file),
                     output=str(tmp_path / "run"), select_best="bleu")  # fmt: skip


@pytest.mark.integration
def test_generation_selects_on_bleu_from_the_command_line(tiny_gpt2, e2e_files, tmp_path):
    train_file, dev_file = e2e_files
    output = tmp_path / "run"
    run("adamix-train", "--model", tiny_gpt2, "--task", "generation", "--train-file", train_file, "--eval-file",
        dev_file, "--method", "lora", "--experts", "2", "--epochs", "2", "--batch-size", "16", "--generate-eval",
        "3", "--max-new-tokens", "8", "--select-best", "bleu", "--eval-every", "2", "--quiet", "--output", output)  # fmt: skip
    training = read_checkpoint_config(output).training
    scores = [e["eval"]["bleu"] for e in training["evaluations"]]
    assert [e["step"] for e in training["evaluations"]] == [2, 4, 6] and len(scores) == 3
    assert training["selection"]["score"] == max(scores) and training["selection"]["metric"] == "bleu"
    assert training["generation"]["bleu"] == pytest.approx(max(scores))  # the final decode is of the best weights


@pytest.mark.integration
def test_cli_refusal_is_one_line(tiny_bert, sentiment_files, tmp_path):
    train_file, _ = sentiment_files
    result = run("adamix-train", "--model", tiny_bert, "--task", "classification", "--train-file", train_file,
                 "--select-best", "accuracy", "--output", tmp_path / "run", check=False, debug=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "adamix-train: error: --select-best needs --eval-file (the set the checkpoint is chosen on)"
    ]
    assert not (tmp_path / "run").exists()
