"""The fixtures every folder shares: tiny random models (BERT, GPT-2, Llama) with tokenizers built here, small
data files, export folders of tiny mixtures and one adamix-serve over them. No hub. What they are built from is in
`helpers` (this folder, tests/, is on sys.path: pytest puts a conftest's folder there). The ``integration``
marker's check (helpers/integration_marker.py) is loaded here for every folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from helpers.data import e2e_rows, sentiment_rows, write_table
from helpers.models import bpe_tokenizer, make_checkpoint, save_model, wordpiece_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

pytest_plugins = ["helpers.integration_marker"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model(BertModel(config), tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return save_model(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return save_model(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sentiment")
    return write_table(folder / "train.tsv", sentiment_rows(96, 1)), write_table(
        folder / "dev.tsv", sentiment_rows(48, 2)
    )


@pytest.fixture(scope="session")
def e2e_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("e2e")
    return (
        write_table(folder / "train.csv", e2e_rows(48, 1), delimiter=","),
        write_table(folder / "dev.csv", e2e_rows(12, 2), delimiter=","),
    )


class LazyExports(Mapping):
    """Export folders built on first access: the Llama folder is built by onnxruntime-genai's model builder, a
    subprocess, so a test that reads only "sentiment" or "restaurants-gpt2" starts no process (and stays in the
    fast loop) and one that reads "restaurants" must be marked integration."""

    def __init__(self, bases: dict[str, tuple[Path, str]], root: Path):
        self.bases, self.root, self.built = bases, root, {}

    def __getitem__(self, name: str) -> Path:
        from adamix_deploy.config import MixtureSpec
        from adamix_deploy.exporters.pipeline import export_checkpoint

        if name not in self.built:
            base, task = self.bases[name]
            spec = MixtureSpec("lora", experts=2, share="none", rank=4)
            ckpt = make_checkpoint(base, task, spec, self.root / f"{name}-ckpt", labels=("negative", "positive"))
            export_checkpoint(ckpt, self.root / name, greedy_steps=4)
            self.built[name] = self.root / name
        return self.built[name]

    def __iter__(self):
        return iter(self.bases)

    def __len__(self) -> int:
        return len(self.bases)


@pytest.fixture(scope="session")
def exports(tiny_bert, tiny_llama, tiny_gpt2, tmp_path_factory) -> Mapping[str, Path]:
    """Export folders of tiny merged mixtures, as adamix-export writes them, each built when first read:
    "sentiment" (BERT classifier, labels negative/positive), "restaurants" (Llama, by the model builder) and
    "restaurants-gpt2" (GPT-2) generators with the prompt template "{prompt}\\n"."""
    bases = {
        "sentiment": (tiny_bert, "classification"),
        "restaurants": (tiny_llama, "generation"),
        "restaurants-gpt2": (tiny_gpt2, "generation"),
    }
    return LazyExports(bases, tmp_path_factory.mktemp("serve-exports"))


@pytest.fixture(scope="session")
def server(exports, tmp_path_factory):
    """One adamix-serve subprocess over the tiny exports, shared by the HTTP tests (tests/serving/http/); every
    test using it is marked integration."""
    from adamix_deploy.testing.processes import ServerProcess

    from helpers.http import SERVER_OPTIONS

    with ServerProcess(list(exports.values()), *SERVER_OPTIONS, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv
