"""Official AdaMix release folders (one ``pytorch_model*.bin`` inside) load and export as that file does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adamix_deploy.config import MixtureSpec
from adamix_deploy.contracts.errors import CheckpointError
from adamix_deploy.contracts.export_folder import MANIFEST_NAME, MERGED_FOLDER
from adamix_deploy.importers import detect_and_load
from adamix_deploy.merge import merge_mixture_model

from helpers.cli import run
from helpers.models import make_checkpoint

RELEASE_FILE = "pytorch_model_mnli.bin"


def official_nlu_state(tiny_bert, folder) -> dict:
    """A state dict with the official AdaMix NLU key names, from a mixture checkpoint with non-trivial weights."""
    ckpt = make_checkpoint(
        tiny_bert, "classification", MixtureSpec("adapter", experts=2, share="up", bottleneck=4), folder
    )
    state = {}
    for name, p in detect_and_load(ckpt).model.named_parameters():
        if ".adapter." in name:
            module = name.split(".dense.adapter.")[0]
            side, kind = {"down_weight": ("A", "weight"), "down_bias": ("A", "bias"),
                          "up_weight": ("B", "weight"), "up_bias": ("B", "bias")}[name.rsplit(".", 1)[1]]  # fmt: skip
            for j in range(p.shape[0]):
                state[f"{module}.ExpertSoup.MoA_{side}.deepspeed_experts.{j}.{kind}"] = p[j].detach().clone()
        elif name.startswith("classifier."):
            state[name] = p.detach().clone()
    return state


@pytest.fixture(scope="module")
def release(tiny_bert, tmp_path_factory):
    """A release folder as the official AdaMix repository ships one: the weights file and some other files."""
    root = tmp_path_factory.mktemp("official")
    folder = root / "adamix-mnli"
    folder.mkdir()
    torch.save(official_nlu_state(tiny_bert, root / "ckpt"), folder / RELEASE_FILE)
    (folder / "README.md").write_text("AdaMix adapters for MNLI\n")
    (folder / "eval_results.txt").write_text("acc = 0.9\n")
    return folder


def merged_state(ckpt) -> dict:
    return merge_mixture_model(ckpt.model, "average").state_dict()


def test_folder_loads_as_its_one_file(release, tiny_bert):
    from_file = detect_and_load(release / RELEASE_FILE, base_model=str(tiny_bert))
    from_folder = detect_and_load(release, base_model=str(tiny_bert))
    assert from_folder.config == from_file.config
    assert from_folder.config.source_format == "official-adamix-nlu"
    assert from_folder.config.source_files == [RELEASE_FILE]
    assert from_folder.folder == from_file.folder == release
    a, b = merged_state(from_file), merged_state(from_folder)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_other_suffixes_are_found_too(release, tiny_bert, tmp_path, suffix):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / f"pytorch_model{suffix}").write_bytes((release / RELEASE_FILE).read_bytes())
    (folder / "model.bin").write_bytes(b"not a pytorch_model* file: ignored")
    ckpt = detect_and_load(folder, base_model=str(tiny_bert))
    assert ckpt.config.source_files == [f"pytorch_model{suffix}"]


def test_several_candidates_name_them_all_in_one_line(release, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("pytorch_model_sst2.pt", RELEASE_FILE):
        (folder / name).write_bytes((release / RELEASE_FILE).read_bytes())
    with pytest.raises(CheckpointError) as caught:
        detect_and_load(folder, base_model="unused")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert f"({RELEASE_FILE}, pytorch_model_sst2.pt)" in message  # sorted
    assert "pass the path" in message


def test_empty_folder_is_still_an_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        detect_and_load(tmp_path)


@pytest.mark.integration
def test_cli_exports_the_folder_as_the_file(release, tiny_bert, tmp_path):
    result = run("adamix-export", "--merge", release, "--base-model", tiny_bert, "--output", tmp_path / "from-folder",
                 check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run("adamix-export", "--merge", release / RELEASE_FILE, "--base-model", tiny_bert,
                 "--output", tmp_path / "from-file", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder_side, file_side = (
        json.loads((tmp_path / name / MANIFEST_NAME).read_text())["source"]
        for name in ("from-folder", "from-file")
    )
    assert folder_side["format"] == file_side["format"] == "official-adamix-nlu"
    assert folder_side["files_hashed"] == file_side["files_hashed"] == [RELEASE_FILE]
    assert folder_side["sha256"] == file_side["sha256"]
    weights = [
        load_file(tmp_path / name / MERGED_FOLDER / "model.safetensors") for name in ("from-folder", "from-file")
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


@pytest.mark.integration
def test_cli_two_candidates_exit_2_with_one_line(release, tiny_bert, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in (RELEASE_FILE, "pytorch_model_sst2.bin"):
        (folder / name).write_bytes((release / RELEASE_FILE).read_bytes())
    result = run("adamix-export", "--merge", folder, "--base-model", tiny_bert, "--output", tmp_path / "out",
                 check=False, debug=False)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert RELEASE_FILE in lines[0] and "pytorch_model_sst2.bin" in lines[0]
    assert not (tmp_path / "out").exists()
