"""Metrics: classification accuracy, macro-F1 and Matthews correlation (CoLA's metric); regression Pearson and
Spearman (STS-B's); generation loss, greedy decoding, BLEU and ROUGE-L."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from adamix_deploy.collate import IGNORE_INDEX, batched, collate
from adamix_deploy.mixture import set_routing
from adamix_deploy.routing import Routing


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy over labelled (target) positions. With label smoothing e it is
    (1 - e) * NLL + e * mean over the vocabulary of -log p, the official AdaMix NLG loss."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _logits(model, encoded: Sequence[dict], pad_token_id: int, routing: Routing | str, batch_size: int):
    """(gold labels, logits on the CPU) of a sequence-level model under ``routing``."""
    model.eval()
    set_routing(model, routing)
    gold, logits = [], []
    for items in batched(encoded, batch_size):
        batch = collate(items, pad_token_id, model_device(model))
        gold.extend(batch.pop("labels").tolist())
        logits.append(model(**batch).logits.float().cpu())
    return gold, torch.cat(logits)


def evaluate_classification(
    model,
    encoded: Sequence[dict],
    pad_token_id: int,
    routing: Routing | str = "average",
    batch_size: int = 64,
) -> dict:
    gold, logits = _logits(model, encoded, pad_token_id, routing, batch_size)
    predictions = logits.argmax(-1).tolist()
    return {
        "loss": float(F.cross_entropy(logits, torch.tensor(gold))),  # mean over examples, no smoothing
        "accuracy": float(accuracy_score(gold, predictions)),
        "f1_macro": float(f1_score(gold, predictions, average="macro")),
        "mcc": float(matthews_corrcoef(gold, predictions)),
        "examples": len(gold),
        "routing": str(routing),
    }


def evaluate_regression(
    model,
    encoded: Sequence[dict],
    pad_token_id: int,
    routing: Routing | str = "average",
    batch_size: int = 64,
) -> dict:
    gold, logits = _logits(model, encoded, pad_token_id, routing, batch_size)
    predictions = logits.squeeze(-1).tolist()
    constant = len(set(predictions)) < 2  # a correlation is undefined for a constant prediction
    return {
        "pearson": 0.0 if constant else float(pearsonr(gold, predictions).statistic),
        "spearman": 0.0 if constant else float(spearmanr(gold, predictions).statistic),
        "mse": float(sum((g - p) ** 2 for g, p in zip(gold, predictions, strict=True)) / len(gold)),
        "examples": len(gold),
        "routing": str(routing),
    }


@torch.no_grad()
def evaluate_generation_loss(
    model,
    encoded: Sequence[dict],
    pad_token_id: int,
    routing: Routing | str = "average",
    batch_size: int = 16,
) -> dict:
    model.eval()
    set_routing(model, routing)
    total, tokens = 0.0, 0
    for items in batched(encoded, batch_size):
        batch = collate(items, pad_token_id, model_device(model))
        labels = batch.pop("labels")
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total += float(causal_lm_loss(model(**batch).logits, labels)) * n
        tokens += n
    loss = total / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": float(torch.exp(torch.tensor(loss))),
        "tokens": tokens,
        "routing": str(routing),
    }


@torch.no_grad()
def generate_texts(
    model, tokenizer, prompts: Sequence[str], template: str, max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy decoding with the transformers generation loop (left padding, stop at eos)."""
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left, so every prompt ends at the edge
    try:
        outputs = []
        for chunk in batched(list(prompts), batch_size):
            texts = [template.format(prompt=p) for p in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model_device(model)
            )
            generated = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            outputs.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs


def generation_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus BLEU against all references of each input (sacrebleu) and mean best ROUGE-L F1."""
    width = max(len(refs) for refs in references)
    # sacrebleu takes reference streams; an input with fewer references pads its streams with None.
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    bleu = sacrebleu.corpus_bleu(list(predictions), streams)
    from rouge_score import rouge_scorer  # only generation runs need it (and nltk behind it)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [
        scorer.score_multi(list(refs), pred)["rougeL"].fmeasure
        for pred, refs in zip(predictions, references, strict=True)
    ]
    return {"bleu": bleu.score, "rouge_l": 100 * sum(rouge) / len(rouge), "inputs": len(predictions)}
