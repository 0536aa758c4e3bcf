"""Tiny models without the hub: tokenizers trained here on the rows of `helpers.data`, random mixture weights,
and mixture checkpoints as adamix-train writes them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from helpers.data import e2e_rows, sentiment_rows


def _corpus() -> list[str]:
    rows = sentiment_rows(200, 0)
    return [r["sentence"] for r in rows] + [f"{r['mr']}\n{r['ref']}" for r in e2e_rows(100, 0)]


def wordpiece_tokenizer():
    """A BERT tokenizer (WordPiece, 200 tokens, [CLS] a [SEP] b [SEP] pairs)."""
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


def bpe_tokenizer():
    """A GPT-2 style tokenizer (byte-level BPE, 300 tokens, "<|endoftext|>" as BOS and EOS)."""
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


def save_model(model, tokenizer, path: Path) -> Path:
    """A model folder as from_pretrained reads it (safetensors weights and the tokenizer)."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every mixture parameter random values (``up`` / ``B`` start at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("base."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def perturb(model: nn.Module) -> nn.Module:
    """Add noise to every trainable parameter of a mixture model (its fresh experts would be zero or equal)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def make_checkpoint(path, task, spec, folder, labels=("0", "1"), train_pooler=False):
    """A mixture checkpoint with non-trivial weights (fresh up/B experts are zero and would hide bugs)."""
    from adamix_deploy.checkpoint import checkpoint_config, save_checkpoint
    from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer

    tokenizer = load_tokenizer(path)
    labels = list(labels) if task == "classification" else None
    model, head, spec = build_mixture_model(path, task, labels, spec, tokenizer, train_pooler=train_pooler)
    torch.manual_seed(0)
    perturb(model)
    config = checkpoint_config(model, str(path), path, task, labels, spec, head, max_length=64,
                               prompt_template="{prompt}\n" if task == "generation" else None,
                               training={"complete": True})  # fmt: skip
    save_checkpoint(folder, config, model, tokenizer)
    return folder
