"""The AdaMix training loop: stochastic routing, two passes, consistency loss, atomic checkpoints.

Reading order: ``TrainOptions`` (`config.py`: what the CLI passes), ``train`` here (top to bottom: data, model,
loop, save), ``adamix_loss`` (`objective.py`: the method's objective). Resume state: `training_state.py`.
``--select-best`` (which evaluation's weights the finished checkpoint keeps): `selection.py`.
Several processes (torchrun): `distributed.py`; ``dist`` below is a single process outside torchrun, where each
of its calls does what the loop did before.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from adamix_deploy.checkpoint import (
    checkpoint_config,
    load_trainable_weights,
    read_training_state,
    save_checkpoint,
    trainable_weights,
)
from adamix_deploy.collate import collate, encode_classification, encode_generation, model_input_names
from adamix_deploy.config import TrainOptions
from adamix_deploy.contracts.atomic import recover_interrupted_replace
from adamix_deploy.contracts.checkpoint_format import read_checkpoint_config
from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.tasks import SEQUENCE_TASKS
from adamix_deploy.data import group_references, label_set, read_classification, read_generation, seeded_subset
from adamix_deploy.distributed import Distributed
from adamix_deploy.evaluation import (
    evaluate_classification,
    evaluate_generation_loss,
    evaluate_regression,
    generate_texts,
    generation_scores,
)
from adamix_deploy.mixture import set_routing
from adamix_deploy.mixture_model import build_mixture_model, load_tokenizer
from adamix_deploy.packaged_models import resolve_model
from adamix_deploy.selection import SELECTION_METRICS, Selection
from adamix_deploy.training_report import epoch_line, mean, run_summary
from adamix_deploy.training_state import capture_training_state, restore_training_state


def load_examples(options: TrainOptions) -> tuple[list, list, list[str] | None, list[tuple[str, list[str]]]]:
    """(train examples, eval examples, labels, generation references), subsets applied."""
    eval_examples = []
    if options.task in SEQUENCE_TASKS:
        columns = options.data_columns()
        regression = options.task == "regression"
        train_examples = read_classification(options.train_file, **columns, regression=regression)
        labels = None if regression else label_set(train_examples)
        if options.eval_file:
            eval_examples = read_classification(options.eval_file, **columns, labels=labels, regression=regression)
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
    """Train and write the mixture checkpoint to ``options.output``; returns the final summary. Under torchrun,
    on every process (`distributed.py`)."""
    dist = Distributed.from_environment()
    if not resume:  # checked before the processes meet; a resume checks the batch it reads from the checkpoint
        dist.check_batch_size(options.batch_size)
    with dist.started(options.device):
        return _train(options, resume, overwrite, dist)


def _train(options: TrainOptions, resume: bool, overwrite: bool, dist: Distributed) -> dict:
    output = Path(options.output)
    if dist.is_main:
        recover_interrupted_replace(output.absolute())
    dist.barrier()
    state = None
    if resume:
        stored_config = read_checkpoint_config(output)
        if stored_config.training.get("complete"):
            raise AdamixError(f"{output}: training already complete; nothing to resume")
        # The run's settings come from the checkpoint; how far to go this time and how to show it, from the caller.
        stored = TrainOptions.from_dict(stored_config.training["options"])
        options = replace(stored, stop_after=options.stop_after, progress=options.progress)
        state = read_training_state(output)
        if state is None:
            raise AdamixError(f"{output}: no training state to resume from")
        dist.check_batch_size(options.batch_size)
    elif output.exists() and not overwrite:
        raise AdamixError(f"{output} exists: pass --resume to continue it or --overwrite to replace it")
    spec = options.mixture
    torch.manual_seed(options.seed)

    # Data first: a bad file fails in a second, before any model is loaded.
    train_examples, eval_examples, labels, references = load_examples(options)

    model_path = resolve_model(options.model)
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    model, head, spec = build_mixture_model(
        model_path, options.task, labels, spec, tokenizer, train_pooler=options.train_pooler,
        freeze_head=options.freeze_head, notice=(lambda line: print(line, file=sys.stderr)) if dist.is_main else None,
    )  # fmt: skip
    # GPU runs differ from CPU runs in floating-point order and in their dropout generator (the GPU's)
    device = dist.choose_device(options.device)
    model.to(device)

    if options.task in SEQUENCE_TASKS:
        accepted = model_input_names(model)
        train_items = encode_classification(tokenizer, train_examples, labels, options.max_length, accepted)
        eval_items = encode_classification(tokenizer, eval_examples, labels, options.max_length, accepted)
    else:
        train_items = encode_generation(tokenizer, train_examples, options.prompt_template, options.max_length)
        eval_items = encode_generation(tokenizer, eval_examples, options.prompt_template, options.max_length)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(train_items) / options.batch_size)  # the global batch under torchrun
    total_steps = steps_per_epoch * options.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(options.warmup_ratio * total_steps), total_steps)

    # What the loop has done so far: a resumed run continues from the checkpoint's record.
    step, history, evaluations, elapsed = 0, [], [], 0.0
    losses: list[float] = []  # this epoch's step losses (a resume mid-epoch continues the list)
    selection = Selection(options.select_best, options.task) if options.select_best else None
    best_weights: dict[str, torch.Tensor] | None = None
    if state is not None:
        progress, best_weights = restore_training_state(model, optimizer, scheduler, state, output)
        step, history, elapsed = progress["step"], progress["history"], progress["elapsed"]
        evaluations, losses = progress.get("evaluations", []), progress.get("epoch_losses", [])
        if selection is not None and progress.get("selection"):
            selection = Selection.from_dict(progress["selection"])
    dist.share_routing(model)  # several processes: from here on, all draw the same routes
    objective = dist.objective(model, options.task, options.consistency_weight, options.label_smoothing)

    config = checkpoint_config(
        model, options.model, model_path, options.task, labels, spec, head,
        max_length=options.max_length,
        prompt_template=options.prompt_template if options.task == "generation" else None,
        data_columns=options.data_columns() if options.task in SEQUENCE_TASKS else None,
    )  # fmt: skip

    def save(complete: bool, extra: dict | None = None) -> None:
        training = {
            "complete": complete,
            "step": step,
            "total_steps": total_steps,
            "history": history,
            "evaluations": evaluations,
            **({"selection": selection.to_dict()} if selection else {}),
            "train_seconds": round(elapsed, 2),
            "options": {**options.to_dict(), "stop_after": None, "progress": True},
            **(extra or {}),
        }
        if dist.is_main:  # one writer; the others wait until the folder is in place
            run_state = None
            if not complete:
                progress = {"step": step, "history": history, "elapsed": elapsed, "evaluations": evaluations,
                            "epoch_losses": losses if step % steps_per_epoch else [],
                            "selection": selection.to_dict() if selection else None}  # fmt: skip
                run_state = capture_training_state(optimizer, scheduler, progress, dist.rng_state(), best_weights)
            save_checkpoint(output, replace(config, training=training), model, tokenizer, run_state)
        dist.barrier()

    decode_each_time = selection is not None and SELECTION_METRICS[selection.metric].decoded

    def decode() -> dict:
        """BLEU / ROUGE-L of the first --generate-eval eval inputs, with three samples."""
        set_routing(model, options.eval_routing)
        prompts = [p for p, _ in references]
        predictions = generate_texts(model, tokenizer, prompts, options.prompt_template, options.max_new_tokens)
        scores = generation_scores(predictions, [refs for _, refs in references])
        samples = [{"prompt": p, "prediction": t} for p, t in zip(prompts[:3], predictions[:3], strict=True)]
        return {**scores, "samples": samples}

    def evaluate() -> dict:
        if options.task == "classification":
            return evaluate_classification(model, eval_items, tokenizer.pad_token_id, options.eval_routing)
        if options.task == "regression":
            return evaluate_regression(model, eval_items, tokenizer.pad_token_id, options.eval_routing)
        metrics = evaluate_generation_loss(model, eval_items, tokenizer.pad_token_id, options.eval_routing)
        if decode_each_time:
            metrics.update({k: v for k, v in decode().items() if k != "samples"})
        return metrics

    def evaluation_point() -> None:
        """Evaluate (rank 0; every rank gets the metrics), record it, and keep the weights if they are the best."""
        nonlocal best_weights
        if not eval_items:
            return
        metrics = dist.from_main(evaluate)
        epoch = round(step / steps_per_epoch, 3)
        evaluations.append({"step": step, "epoch": epoch, "eval": metrics})
        if selection is not None and selection.offer(step, epoch, metrics):
            best_weights = trainable_weights(model)  # every rank holds the same weights (DDP)
        if dist.is_main and selection is not None:
            tqdm.write(f"step {step}: {selection.metric} best {selection.score:.4f} at step {selection.step}",
                       file=sys.stderr)  # fmt: skip

    steps_this_run = 0

    def stopping() -> bool:  # --stop-after reached, training not finished
        return bool(options.stop_after) and steps_this_run >= options.stop_after and step < total_steps

    show = options.progress and dist.is_main
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not show)
    for epoch in range(step // steps_per_epoch, options.epochs):
        model.train()
        order = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(options.seed + epoch))
        if step == epoch * steps_per_epoch:
            losses = []
        start = time.perf_counter()
        for index in range(step - epoch * steps_per_epoch, steps_per_epoch):
            chunk = order[index * options.batch_size : (index + 1) * options.batch_size].tolist()
            items, weight = dist.shard(chunk, train_items, options.task)  # this rank's part of the global batch
            dist.seed_dropout(options.seed, step)
            batch = collate(items, tokenizer.pad_token_id, device)
            loss, parts = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()  # DDP averages the ranks' gradients: weights make it the batch's mean
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_run += 1
            losses.append(dist.global_loss(loss.item(), weight))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", kl=f"{parts['consistency']:.4f}")
            if options.eval_every and (step % options.eval_every == 0 or step == total_steps):
                elapsed += time.perf_counter() - start  # evaluation time is not training time
                evaluation_point()
                model.train()
                start = time.perf_counter()
            if stopping() and index < steps_per_epoch - 1:  # at an epoch's end: after its evaluation
                elapsed += time.perf_counter() - start
                save(complete=False)
                bar.close()
                return {"output": str(output), "complete": False, "step": step, "total_steps": total_steps}
            if options.save_every and step % options.save_every == 0 and step % steps_per_epoch:
                elapsed += time.perf_counter() - start
                start = time.perf_counter()
                save(complete=False)
        elapsed += time.perf_counter() - start
        if not options.eval_every:
            evaluation_point()
        # the epoch's record carries the evaluation at its last step (--eval-every: if that step was one)
        epoch_metrics = evaluations[-1]["eval"] if evaluations and evaluations[-1]["step"] == step else {}
        history.append({"epoch": epoch + 1, "step": step, "train_loss": mean(losses), "eval": epoch_metrics})
        if dist.is_main:
            tqdm.write(epoch_line(epoch + 1, options.epochs, history[-1]), file=sys.stderr)
        if step < total_steps:
            save(complete=False)
        if stopping():
            bar.close()
            return {"output": str(output), "complete": False, "step": step, "total_steps": total_steps}
    bar.close()

    if selection is not None:  # the finished checkpoint holds the best evaluation's weights
        load_trainable_weights(model, best_weights, output)
        best = next(e for e in reversed(evaluations) if e["step"] == selection.step)
        final = {"eval": best["eval"]}
    else:
        final = {"eval": history[-1]["eval"] if history else {}}
    if references:
        final["generation"] = dist.from_main(decode)
    save(True, final)
    return run_summary(output, config, history, final, elapsed, step, selection)
