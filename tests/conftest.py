"""Tiny random models (BERT, GPT-2, Llama) with tokenizers built here, and small data files. No hub."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "lovely", "superb", "fine", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "dull", "terrible", "boring"]
FILLER = ["the", "film", "was", "plot", "acting", "really", "quite", "story", "a", "movie", "and", "it"]
FOODS = ["Italian", "French", "Chinese", "Indian"]
NAMES = ["The Vaults", "Blue Spice", "The Mill", "Zizzi", "Aromi"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": str(label)})
    return rows


def e2e_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, food = rng.choice(NAMES), rng.choice(FOODS)
        rows.append({"mr": f"name[{name}], food[{food}]", "ref": f"{name} serves {food} food."})
    return rows


def write_table(path: Path, rows: list[dict], delimiter: str = "\t") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _corpus() -> list[str]:
    rows = sentiment_rows(200, 0)
    return [r["sentence"] for r in rows] + [f"{r['mr']}\n{r['ref']}" for r in e2e_rows(100, 0)]


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(BertModel(config), tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer()
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
    return _save(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


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


@pytest.fixture(scope="session")
def exports(tiny_bert, tiny_llama, tiny_gpt2, tmp_path_factory) -> dict[str, Path]:
    """Export folders of tiny merged mixtures, as adamix-export writes them: "sentiment" (BERT classifier,
    labels negative/positive), "restaurants" (Llama) and "restaurants-gpt2" (GPT-2) generators with the
    prompt template "{prompt}\\n"."""
    from test_export import make_checkpoint

    from adamix_deploy.config import MixtureSpec
    from adamix_deploy.exporters.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("serve-exports")
    folders = {}
    for name, base, task in [
        ("sentiment", tiny_bert, "classification"),
        ("restaurants", tiny_llama, "generation"),
        ("restaurants-gpt2", tiny_gpt2, "generation"),
    ]:
        spec = MixtureSpec("lora", experts=2, share="none", rank=4)
        ckpt = make_checkpoint(base, task, spec, root / f"{name}-ckpt", labels=("negative", "positive"))
        export_checkpoint(ckpt, root / name, greedy_steps=4)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def server(exports, tmp_path_factory):
    """One adamix-serve subprocess over the tiny exports, shared by the HTTP tests (tests/test_http_*.py)."""
    from http_helpers import SERVER_OPTIONS

    from adamix_deploy.testing.processes import ServerProcess

    with ServerProcess(list(exports.values()), *SERVER_OPTIONS, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv
