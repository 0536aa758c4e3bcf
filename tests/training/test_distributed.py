"""adamix-train under torchrun (2 processes, gloo on the CPU): the same weights as one process with the same
global batch, --resume across processes, the batch-size rule, and why DDP needs no find_unused_parameters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.checkpoint_format import WEIGHTS_NAME, read_checkpoint_config
from adamix_deploy.distributed import Distributed
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.objective import adamix_loss

from helpers.cli import BIN, run

# Two processes sum the gradient in another order than one (each rank its half, then gloo adds the halves), so
# the weights agree to rounding, which Adam magnifies where a gradient is near zero (m / sqrt(v) of tiny
# numbers): measured 3.4e-8 to 2.5e-6 at most (one bias element of 0.003; conftest's tokenizer, hence the
# data, differs between sessions). A real mismatch (other routes, another weighting of the batch) moves
# weights by about the learning rate, 3e-3, per step.
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def quiet_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT without dropout: then the only randomness in training is the routing."""
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_args(model, sentiment_files, output, *extra):
    train_file, dev_file = sentiment_files
    # 89 examples, batch 8: 12 steps per epoch, the last chunk one example (the second rank runs it with weight
    # 0); random evaluation routing draws routes on rank 0 only, which the next epoch must see on both.
    return ["--model", model, "--task", "classification", "--train-file", train_file, "--eval-file", dev_file,
            "--method", "adapter", "--experts", "2", "--share", "none", "--bottleneck", "4", "--batch-size", "8",
            "--epochs", "2", "--max-train-examples", "89", "--eval-routing", "random", "--quiet",
            "--output", output, *extra]  # fmt: skip


def torchrun(*args, check: bool = True):
    return run("torchrun", "--nproc_per_node", "2", "--standalone", BIN / "adamix-train", *args, check=check)


def weights(folder):
    return load_file(folder / WEIGHTS_NAME)


@pytest.fixture(scope="module")
def two_process_run(quiet_bert, sentiment_files, tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(*train_args(quiet_bert, sentiment_files, output))
    return output


@pytest.mark.integration
def test_two_processes_match_one_with_the_same_global_batch(
    two_process_run, quiet_bert, sentiment_files, tmp_path
):
    run("adamix-train", *train_args(quiet_bert, sentiment_files, tmp_path / "one"))
    one, two = weights(tmp_path / "one"), weights(two_process_run)
    assert set(one) == set(two)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"max weight difference, 1 vs 2 processes: {worst:.2e}")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=RTOL, atol=ATOL, msg=k)
    a, b = read_checkpoint_config(tmp_path / "one").training, read_checkpoint_config(two_process_run).training
    assert a["step"] == b["step"] == 24 and a["complete"] and b["complete"]
    for x, y in zip(a["history"], b["history"], strict=True):  # the global loss, and rank 0's evaluation
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-5
        assert abs(x["eval"]["accuracy"] - y["eval"]["accuracy"]) < 1e-9


@pytest.mark.integration
def test_resume_under_torchrun_equals_the_uninterrupted_run(
    two_process_run, quiet_bert, sentiment_files, tmp_path
):
    output = tmp_path / "resumed"
    torchrun(*train_args(quiet_bert, sentiment_files, output, "--stop-after", "7"))
    training = read_checkpoint_config(output).training
    assert training["complete"] is False and training["step"] == 7
    torchrun("--output", output, "--resume", "--quiet")
    straight, resumed = weights(two_process_run), weights(output)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # same processes: same sums, bit for bit
    assert read_checkpoint_config(output).training["complete"] is True
    assert [p.name for p in output.parent.iterdir()] == ["resumed"]  # one writer: no temporary folder left


@pytest.mark.integration
def test_select_best_under_torchrun_chooses_as_one_process(quiet_bert, sentiment_files, tmp_path):
    """Rank 0 evaluates, every rank keeps the same best weights, the one writer saves them."""
    extra = ("--select-best", "loss", "--eval-every", "5")
    torchrun(*train_args(quiet_bert, sentiment_files, tmp_path / "two", *extra))
    run("adamix-train", *train_args(quiet_bert, sentiment_files, tmp_path / "one", *extra))
    one, two = (read_checkpoint_config(tmp_path / name).training for name in ("one", "two"))
    assert (
        [e["step"] for e in one["evaluations"]] == [e["step"] for e in two["evaluations"]] == [5, 10, 15, 20, 24]
    )
    assert one["selection"]["step"] == two["selection"]["step"]
    assert two["selection"]["score"] == pytest.approx(one["selection"]["score"], rel=1e-5)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, msg=k)


@pytest.mark.integration
def test_batch_not_divisible_by_the_processes_is_one_line_and_exit_2(
    quiet_bert, sentiment_files, tmp_path, monkeypatch
):
    # What each torchrun worker does, checked before the processes meet (torchrun itself then exits 1).
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    args = train_args(quiet_bert, sentiment_files, tmp_path / "run")
    args[args.index("--batch-size") + 1] = "7"
    result = run("adamix-train", *args, check=False, debug=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "adamix-train: error: --batch-size 7 is the global batch: it must divide by the 2 processes"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "method, share, weight",
    [("adapter", "none", 1.0), ("adapter", "up", 1.0), ("lora", "down", 1.0), ("lora", "up", 0.0)],
)
def test_every_trainable_parameter_gets_a_gradient_each_step(quiet_bert, method, share, weight):
    """Why DDP runs with find_unused_parameters=False: the experts of a side are slices of one parameter, so
    a step that routes through one expert still gives the whole stacked parameter a gradient."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(quiet_bert)
    spec = MixtureSpec(method, experts=4, share=share, bottleneck=4, rank=2)
    model, _, _ = build_mixture_model(quiet_bert, "classification", ["0", "1"], spec, tokenizer, train_pooler=True)
    batch = dict(tokenizer(["the film was good", "bad plot"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    loss, _ = adamix_loss(model.train(), batch, "classification", consistency_weight=weight)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_a_short_last_chunk_is_weighted_to_the_global_mean():
    items = [{"input_ids": [1, 2], "labels": [-100, 5, 6, 7][: 2 + i % 3]} for i in range(5)]
    for task in ("classification", "generation"):
        shares = [Distributed(rank, 2).shard([0, 1, 2], items, task) for rank in (0, 1)]
        assert [len(s[0]) for s in shares] == [2, 1]
        assert sum(w for _, w in shares) == pytest.approx(2.0)  # the weights average to 1 over the ranks
    first, empty = (Distributed(rank, 2).shard([4], items, "classification") for rank in (0, 1))
    assert first == ([items[4]], 2.0) and empty == ([items[4]], 0.0)  # an empty rank still runs, weight 0
    assert Distributed().shard([3, 1], items, "generation") == ([items[3], items[1]], 1.0)
