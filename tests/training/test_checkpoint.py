"""Mixture checkpoints: exact round trip, atomic writes, resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adamix_deploy.checkpoint import load_checkpoint, save_checkpoint
from adamix_deploy.config import MixtureSpec, TrainOptions
from adamix_deploy.contracts.checkpoint_format import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_config
from adamix_deploy.contracts.errors import CheckpointError
from adamix_deploy.mixture import set_routing
from adamix_deploy.train import train


def options(tiny_bert, sentiment_files, output, **kw) -> TrainOptions:
    train_file, dev_file = sentiment_files
    defaults = dict(
        model=str(tiny_bert),
        task="classification",
        train_file=str(train_file),
        eval_file=str(dev_file),
        output=str(output),
        mixture=MixtureSpec("adapter", experts=3, share="none", bottleneck=4),
        epochs=2,
        batch_size=16,
        progress=False,
    )
    return TrainOptions(**{**defaults, **kw})


def test_checkpoint_round_trip_is_bit_exact(tiny_bert, sentiment_files, tmp_path):
    summary = train(options(tiny_bert, sentiment_files, tmp_path / "ckpt", epochs=1))
    assert summary["steps"] == 6 and summary["metric"]["name"] == "accuracy"
    saved = load_file(tmp_path / "ckpt" / WEIGHTS_NAME)
    assert not any(".base." in k or k.startswith("bert.embeddings") for k in saved)  # never the frozen base
    ckpt = load_checkpoint(tmp_path / "ckpt")
    loaded = {n: p for n, p in ckpt.model.named_parameters() if p.requires_grad}
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[n], saved[n]) for n in saved)
    assert json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())["format_version"] == 1
    config = read_checkpoint_config(tmp_path / "ckpt")
    assert config.labels == ["0", "1"] and config.mixture["experts"] == 3 and config.training["complete"] is True
    # same outputs after a second load: nothing random at load time
    again = load_checkpoint(tmp_path / "ckpt")
    batch = ckpt.tokenizer(["the film was good"], return_tensors="pt")
    for model in (ckpt.model, again.model):
        set_routing(model, "average")
    torch.testing.assert_close(ckpt.model(**batch).logits, again.model(**batch).logits, rtol=0, atol=0)


def test_interrupted_save_leaves_previous_checkpoint_intact(tiny_bert, sentiment_files, tmp_path):
    target = tmp_path / "ckpt"
    train(options(tiny_bert, sentiment_files, target, epochs=1))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    ckpt = load_checkpoint(target)

    class ExplodingTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, ckpt.config, ckpt.model, ExplodingTokenizer())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(
    tiny_bert, sentiment_files, tmp_path, device
):
    straight = train(options(tiny_bert, sentiment_files, tmp_path / "a", device=device))
    partial = train(options(tiny_bert, sentiment_files, tmp_path / "b", stop_after=4, device=device))
    assert partial == {"output": str(tmp_path / "b"), "complete": False, "step": 4, "total_steps": 12}
    assert read_checkpoint_config(tmp_path / "b").training["complete"] is False
    resumed = train(options(tiny_bert, sentiment_files, tmp_path / "b", device=device), resume=True)
    assert resumed["steps"] == straight["steps"] == 12
    a, b = load_file(tmp_path / "a" / WEIGHTS_NAME), load_file(tmp_path / "b" / WEIGHTS_NAME)
    # A GPU may sum in another order from run to run; a restarted dropout stream would differ far more.
    same = torch.equal if device == "cpu" else lambda x, y: torch.allclose(x, y, rtol=0, atol=1e-5)
    assert all(same(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "training_state.json").exists()  # finished checkpoints carry no optimizer


def test_a_stop_at_an_epoch_end_keeps_that_epoch_record(tiny_bert, sentiment_files, tmp_path):
    """6 steps an epoch: a stop after 6 evaluates and records epoch 1 before it saves, as a straight run does."""
    straight = read_checkpoint_config(train(options(tiny_bert, sentiment_files, tmp_path / "a"))["output"])
    partial = train(options(tiny_bert, sentiment_files, tmp_path / "b", stop_after=6))
    assert partial["step"] == 6 and partial["complete"] is False
    assert [h["epoch"] for h in read_checkpoint_config(tmp_path / "b").training["history"]] == [1]
    train(options(tiny_bert, sentiment_files, tmp_path / "b"), resume=True)
    resumed = read_checkpoint_config(tmp_path / "b")
    assert resumed.training["history"] == straight.training["history"]


def test_unknown_or_broken_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        read_checkpoint_config(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="not a mixture checkpoint"):
        read_checkpoint_config(tmp_path / "x")
    (tmp_path / "x" / CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint_config(tmp_path / "x")


def test_shape_mismatch_is_refused(tiny_bert, sentiment_files, tmp_path):
    train(options(tiny_bert, sentiment_files, tmp_path / "ckpt", epochs=1))
    config_path = tmp_path / "ckpt" / CONFIG_NAME
    config = json.loads(config_path.read_text())
    config["mixture"]["bottleneck"] = 5
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(tmp_path / "ckpt")
