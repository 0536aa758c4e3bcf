"""The AdaMix training loop: stochastic routing, two passes, consistency loss, atomic checkpoints.

Reading order: ``TrainOptions`` (what the CLI passes), ``train`` (top to bottom: data, model, loop, save),
``adamix_loss`` (the method's objective).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from adamix_deploy.atomic import recover_interrupted_replace
from adamix_deploy.batches import (
    DEFAULT_PROMPT_TEMPLATE,
    IGNORE_INDEX,
    collate,
    encode_classification,
    encode_generation,
    model_input_names,
)
from adamix_deploy.checkpoint import (
    WEIGHTS_NAME,
    load_trainable_weights,
    read_config,
    read_training_state,
    save_checkpoint,
)
from adamix_deploy.consistency import symmetric_kl
from adamix_deploy.data import (
    group_references,
    label_set,
    read_classification,
    read_generation,
    seeded_subset,
)
from adamix_deploy.errors import AdamixError
from adamix_deploy.evaluate import (
    causal_lm_loss,
    evaluate_classification,
    evaluate_generation_loss,
    generate_texts,
    generation_scores,
)
from adamix_deploy.inject import MixtureSpec, count_parameters
from adamix_deploy.mixture import set_routing
from adamix_deploy.modeling import TASKS, build_mixture_model, load_tokenizer
from adamix_deploy.models import resolve_model
from adamix_deploy.routing import Routing

# Measured on MiniLM-L6 / SST-2 (1,000 examples, 3 epochs): 1e-3 underfits in short runs, 3e-3 does not.
DEFAULT_LR = {"adapter": 3e-3, "lora": 3e-3, "head": 2e-2}


@dataclass
class TrainOptions:
    model: str
    task: str
    train_file: str
    output: str
    eval_file: str | None = None
    mixture: MixtureSpec = field(default_factory=MixtureSpec)
    consistency_weight: float = 1.0
    epochs: int = 3
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR of the method
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 42
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str = "label"
    prompt_column: str | None = None
    target_column: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_routing: str = "average"
    generate_eval: int = 0  # generation: decode this many eval inputs at the end for BLEU / ROUGE-L
    max_new_tokens: int = 64
    save_every: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    stop_after: int | None = None  # save and stop after N steps in this invocation (continue with --resume)
    progress: bool = True

    def validate(self) -> None:
        self.mixture.validate()
        if self.task not in TASKS:
            raise AdamixError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "generation" and self.mixture.method == "head":
            raise AdamixError(
                "method head trains nothing for generation (a language model has no new head): use lora or adapter"
            )
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise AdamixError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise AdamixError(f"lr must be > 0, got {self.lr}")
        if self.consistency_weight < 0:
            raise AdamixError(f"consistency weight must be >= 0, got {self.consistency_weight}")
        if "{prompt}" not in self.prompt_template:
            raise AdamixError("prompt template must contain {prompt}")
        Routing.parse(self.eval_routing)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainOptions:
        return cls(**{**data, "mixture": MixtureSpec.from_dict(data["mixture"])})


def adamix_loss(model, batch: dict, task: str, consistency_weight: float) -> tuple[torch.Tensor, dict]:
    """Task loss (mean over the two passes) + w * symmetric KL between two independently routed passes.

    With w = 0 a single pass is made: the plain single-module objective."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits_p = model(**inputs).logits
    task_loss = _task_loss(logits_p, labels, task)
    if consistency_weight == 0:
        return task_loss, {"task": task_loss.item(), "consistency": 0.0}
    logits_q = model(**inputs).logits  # a new random expert per module: an independent routing
    task_loss = 0.5 * (task_loss + _task_loss(logits_q, labels, task))
    if task == "classification":
        consistency = symmetric_kl(logits_p, logits_q)
    else:  # per target token: position t predicts label t + 1
        consistency = symmetric_kl(logits_p[:, :-1], logits_q[:, :-1], labels[:, 1:] != IGNORE_INDEX)
    loss = task_loss + consistency_weight * consistency
    return loss, {"task": task_loss.item(), "consistency": consistency.item()}


def _task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(logits.float(), labels)
    return causal_lm_loss(logits, labels)


def load_examples(options: TrainOptions) -> tuple[list, list, list[str] | None, list[tuple[str, list[str]]]]:
    """(train examples, eval examples, labels, generation references), subsets applied."""
    eval_examples = []
    if options.task == "classification":
        columns = (options.text_column, options.pair_column, options.label_column)
        train_examples = read_classification(options.train_file, *columns)
        labels = label_set(train_examples)
        if options.eval_file:
            eval_examples = read_classification(options.eval_file, *columns, labels)
    else:
        labels = None
        columns = (options.prompt_column, options.target_column)
        train_examples = read_generation(options.train_file, *columns)
        if options.eval_file:
            eval_examples = read_generation(options.eval_file, *columns)
    train_examples = seeded_subset(train_examples, options.max_train_examples, options.seed)
    # BLEU needs every reference of an input: decoding draws its inputs from the whole eval file, while
    # --max-eval-examples only bounds the per-epoch evaluation.
    references = group_references(eval_examples)[: options.generate_eval] if options.task == "generation" else []
    eval_examples = seeded_subset(eval_examples, options.max_eval_examples, options.seed)
    return train_examples, eval_examples, labels, references


def train(options: TrainOptions, resume: bool = False, overwrite: bool = False) -> dict:
    """Train and write the mixture checkpoint to ``options.output``; returns the final summary."""
    output = Path(options.output)
    recover_interrupted_replace(output.absolute())
    state = None
    if resume:
        config = read_config(output)
        if config["training"].get("complete"):
            raise AdamixError(f"{output}: training already complete; nothing to resume")
        # The run's settings come from the checkpoint; how far to go this time and how to show it, from the caller.
        stored = TrainOptions.from_dict(config["training"]["options"])
        options = replace(stored, stop_after=options.stop_after, progress=options.progress)
        state = read_training_state(output)
        if state is None:
            raise AdamixError(f"{output}: no training state to resume from")
    elif output.exists() and not overwrite:
        raise AdamixError(f"{output} exists: pass --resume to continue it or --overwrite to replace it")
    options.validate()
    spec = options.mixture
    torch.manual_seed(options.seed)

    # Data first: a bad file fails in a second, before any model is loaded.
    train_examples, eval_examples, labels, references = load_examples(options)

    model_path = resolve_model(options.model)
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    model, head = build_mixture_model(model_path, options.task, labels, spec, tokenizer)
    n_trainable, n_total = count_parameters(model)

    if options.task == "classification":
        accepted = model_input_names(model)
        train_items = encode_classification(tokenizer, train_examples, labels, options.max_length, accepted)
        eval_items = encode_classification(tokenizer, eval_examples, labels, options.max_length, accepted)
    else:
        train_items = encode_generation(tokenizer, train_examples, options.prompt_template, options.max_length)
        eval_items = encode_generation(tokenizer, eval_examples, options.prompt_template, options.max_length)

    params = [p for p in model.parameters() if p.requires_grad]
    lr = options.lr or DEFAULT_LR[spec.method]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(train_items) / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(options.warmup_ratio * total_steps), total_steps)

    step, history, elapsed = 0, [], 0.0
    if state is not None:
        step, history, elapsed = _restore(model, optimizer, scheduler, state, output)

    config = {
        "base_model": {
            "name": options.model,
            "path": str(model_path),
            "model_type": model.config.model_type,
            "architecture": type(model).__name__,
        },
        "task": options.task,
        "labels": labels,
        "max_length": options.max_length,
        "prompt_template": options.prompt_template if options.task == "generation" else None,
        "mixture": spec.to_dict(),
        "head": head,
        "parameters": {"trainable": n_trainable, "total": n_total, "trainable_share": n_trainable / n_total},
    }

    def save(complete: bool, extra: dict | None = None) -> None:
        training = {
            "complete": complete,
            "step": step,
            "total_steps": total_steps,
            "history": history,
            "train_seconds": round(elapsed, 2),
            "options": {**options.to_dict(), "stop_after": None, "progress": True},
            **(extra or {}),
        }
        run_state = None if complete else _capture(optimizer, scheduler, step, history, elapsed)
        save_checkpoint(output, {**config, "training": training}, model, tokenizer, run_state)

    def evaluate() -> dict:
        if not eval_items:
            return {}
        if options.task == "classification":
            return evaluate_classification(model, eval_items, tokenizer.pad_token_id, options.eval_routing)
        return evaluate_generation_loss(model, eval_items, tokenizer.pad_token_id, options.eval_routing)

    steps_this_run = 0
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not options.progress)
    for epoch in range(step // steps_per_epoch, options.epochs):
        model.train()
        order = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(options.seed + epoch))
        losses = []
        start = time.perf_counter()
        for index in range(step - epoch * steps_per_epoch, steps_per_epoch):
            chunk = order[index * options.batch_size : (index + 1) * options.batch_size]
            batch = collate([train_items[i] for i in chunk], tokenizer.pad_token_id)
            loss, parts = adamix_loss(model, batch, options.task, options.consistency_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_run += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", kl=f"{parts['consistency']:.4f}")
            if options.stop_after and steps_this_run >= options.stop_after and step < total_steps:
                elapsed += time.perf_counter() - start
                save(complete=False)
                bar.close()
                return {"output": str(output), "complete": False, "step": step, "total_steps": total_steps}
            if options.save_every and step % options.save_every == 0 and step % steps_per_epoch:
                elapsed += time.perf_counter() - start
                start = time.perf_counter()
                save(complete=False)
        elapsed += time.perf_counter() - start
        metrics = evaluate()
        history.append({"epoch": epoch + 1, "step": step, "train_loss": _mean(losses), "eval": metrics})
        tqdm.write(_epoch_line(epoch + 1, options.epochs, history[-1]), file=sys.stderr)
        if step < total_steps:
            save(complete=False)
    bar.close()

    final = {"eval": history[-1]["eval"] if history else {}}
    if references:
        set_routing(model, options.eval_routing)
        prompts = [p for p, _ in references]
        predictions = generate_texts(model, tokenizer, prompts, options.prompt_template, options.max_new_tokens)
        final["generation"] = generation_scores(predictions, [refs for _, refs in references])
        final["generation"]["samples"] = [
            {"prompt": p, "prediction": t} for p, t in zip(prompts[:3], predictions[:3], strict=True)
        ]
    save(True, final)
    return summary(output, config, history, final, elapsed, step)


def summary(output: Path, config: dict, history: list, final: dict, elapsed: float, step: int) -> dict:
    metric = _headline_metric(config["task"], final)
    return {
        "output": str(output),
        "task": config["task"],
        "method": config["mixture"]["method"],
        "experts": config["mixture"]["experts"],
        "metric": metric,
        "eval": final.get("eval", {}),
        **(
            {"generation": {k: v for k, v in final["generation"].items() if k != "samples"}}
            if "generation" in final
            else {}
        ),
        "trainable_parameters": config["parameters"]["trainable"],
        "total_parameters": config["parameters"]["total"],
        "trainable_share": config["parameters"]["trainable_share"],
        "train_seconds": round(elapsed, 2),
        "steps": step,
        "epochs": len(history),
    }


def _headline_metric(task: str, final: dict) -> dict | None:
    if "generation" in final:
        return {"name": "bleu", "value": final["generation"]["bleu"]}
    ev = final.get("eval") or {}
    if task == "classification" and "accuracy" in ev:
        return {"name": "accuracy", "value": ev["accuracy"], "routing": ev["routing"]}
    if "loss" in ev:
        return {"name": "eval_loss", "value": ev["loss"], "routing": ev["routing"]}
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _epoch_line(epoch: int, epochs: int, record: dict) -> str:
    ev = record["eval"]
    if "accuracy" in ev:
        shown = (
            f"eval accuracy {ev['accuracy']:.4f}  f1 {ev['f1_macro']:.4f} ({ev['routing']}, {ev['examples']} ex)"
        )
    elif "loss" in ev:
        shown = f"eval loss {ev['loss']:.4f}  ppl {ev['perplexity']:.2f} ({ev['routing']})"
    else:
        shown = "no eval file"
    loss = record["train_loss"]
    return (
        f"epoch {epoch}/{epochs}  step {record['step']}  train loss {loss:.4f}  {shown}"
        if loss is not None
        else shown
    )


def _capture(optimizer, scheduler, step: int, history: list, elapsed: float) -> tuple[dict, dict]:
    """Optimizer, scheduler and RNG state as (tensors, JSON): safetensors cannot hold nested structures."""
    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    skeleton = {}
    for pid, slots in opt["state"].items():
        skeleton[str(pid)] = {}
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.contiguous()
                skeleton[str(pid)][key] = None
            else:
                skeleton[str(pid)][key] = value
    state = {
        "step": step,
        "history": history,
        "elapsed": elapsed,
        "optimizer_state": skeleton,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
    }
    return tensors, json.loads(json.dumps(state))


def _restore(model, optimizer, scheduler, state: tuple[dict, dict], output: Path) -> tuple[int, list, float]:
    tensors, info = state
    load_trainable_weights(model, load_file(output / WEIGHTS_NAME), output)
    opt_state = {
        int(pid): {k: tensors[f"optimizer.{pid}.{k}"] if v is None else v for k, v in slots.items()}
        for pid, slots in info["optimizer_state"].items()
    }
    optimizer.load_state_dict({"state": opt_state, "param_groups": info["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return info["step"], info["history"], info["elapsed"]
