"""The selection study's machinery (benchmarks/adamix_quality/epochwise.py): a run scored after every epoch ends
where the plain run ends, and the three ways of picking a checkpoint pick what they say."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adamix_deploy.config import MixtureSpec, TrainOptions
from adamix_deploy.contracts.checkpoint_format import WEIGHTS_NAME, read_checkpoint_config
from adamix_deploy.routing_comparison import compare_routings
from adamix_deploy.train import train
from benchmarks.adamix_quality.epochwise import selected, selection_study, train_scoring_epochs


def test_scored_epoch_by_epoch_ends_as_the_plain_run(tiny_bert, sentiment_files, tmp_path):
    train_file, dev_file = sentiment_files

    def options(output):
        return TrainOptions(model=str(tiny_bert), task="classification", train_file=str(train_file),
                            output=str(output), mixture=MixtureSpec("adapter", experts=2, bottleneck=4), epochs=3,
                            batch_size=16, progress=False)  # fmt: skip

    def score(checkpoint) -> dict:
        return {"dev": compare_routings(checkpoint, dev_file, ["average"])["routings"]["average"]}

    summary, per_epoch = train_scoring_epochs(options(tmp_path / "epochwise"), 6, score)
    train(options(tmp_path / "plain"))
    assert [(e["epoch"], e["step"]) for e in per_epoch] == [(1, 6), (2, 12), (3, 18)]
    assert summary["steps"] == 18 and read_checkpoint_config(tmp_path / "epochwise").training["complete"]
    a, b = load_file(tmp_path / "epochwise" / WEIGHTS_NAME), load_file(tmp_path / "plain" / WEIGHTS_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = read_checkpoint_config(tmp_path / "plain").training["history"]
    assert [h["train_loss"] for h in plain] == pytest.approx([h["train_loss"] for h in
                                                               read_checkpoint_config(tmp_path / "epochwise").training["history"]], rel=0, abs=0)  # fmt: skip


def rows(val: list[float], test: list[float]) -> list[dict]:
    return [
        {"epoch": i + 1, "val": {"accuracy": v}, "test": {"accuracy": t}}
        for i, (v, t) in enumerate(zip(val, test, strict=True))
    ]


def test_the_three_ways_of_picking():
    per_epoch = rows([0.5, 0.7, 0.7, 0.6], [0.9, 0.6, 0.8, 0.7])
    assert selected(per_epoch, None, "test", "accuracy", True) == {"epoch": 4, "score": 0.7}
    assert selected(per_epoch, "val", "test", "accuracy", True) == {"epoch": 2, "score": 0.6}  # tie: earlier
    assert selected(per_epoch, "test", "test", "accuracy", True) == {"epoch": 1, "score": 0.9}
    assert selected(per_epoch, "val", "test", "accuracy", False) == {"epoch": 1, "score": 0.9}  # lower is better


def test_picking_on_the_reported_set_never_scores_below_the_last_checkpoint():
    runs = {
        "mixture": {
            0: rows([0.5, 0.6], [0.70, 0.72]),
            1: rows([0.6, 0.5], [0.75, 0.71]),
            2: rows([1, 0], [0.7, 0.7]),
        },
        "single": {0: rows([0.5], [0.71]), 1: rows([0.5], [0.73]), 2: rows([0.5], [0.69])},
    }
    study = selection_study(runs, "mixture", "single", "test", "accuracy", True, scale=100)
    last, on_val, on_test = study["ways"].values()
    assert last["difference"]["per_seed"] == pytest.approx([1.0, -2.0, 1.0])
    assert on_val["difference"]["per_seed"] == pytest.approx([1.0, 2.0, 1.0])  # seed 1 picks epoch 1 on val
    assert on_test["mixture"]["change_from_last"][0] == pytest.approx(4 / 3)
    assert on_test["single"]["change_from_last"][0] == 0  # one epoch: nothing to pick
    assert on_test["mixture"]["mean_epoch"] == pytest.approx(4 / 3) and on_test["difference"]["wins"] == 3
