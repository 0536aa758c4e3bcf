"""PyTorch -> ONNX with PyTorch's own exporter (`torch.onnx.export`), in the graph interface optimum's exporter
gave (tasks text-classification and text-generation-with-past), so that the server, the Triton repository and
onnxruntime adapters read the new graphs as they read the old ones:

- encoders (classification, regression): ``input_ids``, ``attention_mask`` and ``token_type_ids`` where the
  model takes them (int64, axes ``batch_size`` x ``sequence_length``) -> ``logits`` (float, ``batch_size`` x
  labels);
- decoders (generation): ``input_ids``, ``attention_mask`` (``batch_size`` x ``past_sequence_length +
  sequence_length``), ``position_ids``, ``past_key_values.{i}.key`` / ``.value`` (``batch_size`` x kv heads x
  ``past_sequence_length`` x head dim, heads and head dim fixed) -> ``logits``, ``present.{i}.key`` /
  ``.value``. An empty cache (past length 0) is a prefill; rows left-padded with mask zeros and given their own
  position ids get the logits they get alone (the server's continuous batching relies on it).

Which exporter, measured on MiniLM-L6 (merged LoRA classifier, onnxruntime 1.32's transformer optimiser after
export; the optimum reference had 50 nodes: Attention 6, EmbedLayerNormalization 1, SkipLayerNormalization 12,
BiasGelu 6): the TorchScript exporter (``dynamo=False``) with eager attention gives exactly that graph (50
nodes, the same fused operators). ``dynamo=True`` (with or without onnxscript's optimizer, eager or SDPA
attention) fuses no Attention and no EmbedLayerNormalization (187-359 nodes); onnxscript's own
``optimize_for_ort`` fusions recover Attention but not the embedding (77 nodes). Latency was level within the
noise of a shared CPU. Parity was below 1e-7 on every path. Decoders export on the same path: it handles
``DynamicCache`` in transformers 5, an empty cache and left padding (checked by tests/export/test_torch_export.py),
and the graph rewrites downstream (`tied_weights`, `ort_adapters`) find the same MatMul / Gemm layout optimum's
(TorchScript) exports had. torch is pinned (2.13), where the TorchScript exporter is deprecated but present.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from adamix_deploy.contracts.errors import AdamixError

ONNX_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx_data"  # optimum's name; the pipeline leaves it with the raw export
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # a graph with more weight bytes keeps them in EXTERNAL_DATA_NAME
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SEQUENCE_AXES = {0: "batch_size", 1: "sequence_length"}
# example sizes for the trace: none of them 0 or 1, so that no size is mistaken for a constant
EXAMPLE_BATCH, EXAMPLE_SEQUENCE, EXAMPLE_PAST = 2, 3, 4


# what a model the exporter cannot trace or convert raises (an unsupported operator, data-dependent control flow)
EXPORT_ERRORS = (
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    NotImplementedError,
    torch.onnx.errors.OnnxExporterError,
)


def export_onnx(model, tokenizer, task: str, folder: Path, opset: int) -> Path:
    """Write ``model.onnx`` and the files the export folder needs beside it (config.json, generation_config.json
    for decoders, the tokenizer's files) into ``folder``; returns the model path.

    The model may hold static adapters (not a stock architecture): it is exported from the instance, and left in
    the mode (eval) and attention implementation it came in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if task == "generation":
        module, args, inputs, outputs, axes = decoder_with_past(model)
    else:
        module, args, inputs, outputs, axes = encoder_logits(model, tokenizer)
    path = folder / ONNX_NAME
    with _eager_attention(model), _quiet():
        try:
            if _weight_bytes(model) < PROTOBUF_LIMIT:
                _export(module, args, path, inputs, outputs, axes, opset)
            else:
                _export_large(module, args, path, inputs, outputs, axes, opset)
        except EXPORT_ERRORS as e:
            raise AdamixError(f"ONNX export failed: {_first_line(e)}") from None
    write_companion_files(model, tokenizer, task, folder)
    return path


# -- encoders ----------------------------------------------------------------------------------------------------
class EncoderLogits(nn.Module):
    """The classifier's logits from its token inputs, by name (the ONNX inputs are this forward's arguments)."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tokens, strict=True))).logits


def encoder_logits(model: nn.Module, tokenizer) -> tuple:
    """The module, example arguments, input and output names and dynamic axes of a sequence classifier. Its
    inputs are those of ``input_ids``, ``attention_mask``, ``token_type_ids`` that its forward takes and its
    tokenizer emits (optimum's choice: RoBERTa and XLM-R take no token_type_ids, DistilBERT has none)."""
    accepted = set(inspect.signature(model.forward).parameters)
    emitted = set(getattr(tokenizer, "model_input_names", None) or ENCODER_INPUTS)
    names = [n for n in ENCODER_INPUTS if n in accepted and (n in emitted or n == "input_ids")]
    shape = (EXAMPLE_BATCH, EXAMPLE_SEQUENCE + EXAMPLE_PAST)
    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    examples = {
        "input_ids": torch.randint(min(vocab, 5), vocab, shape),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "token_type_ids": torch.zeros(shape, dtype=torch.long),
    }
    axes = {n: SEQUENCE_AXES for n in names} | {"logits": {0: "batch_size"}}
    return EncoderLogits(model, names).eval(), tuple(examples[n] for n in names), names, ["logits"], axes


# -- decoders ----------------------------------------------------------------------------------------------------
class DecoderWithPast(nn.Module):
    """A causal LM over flat cache tensors: (input_ids, attention_mask, position_ids, key 0, value 0, key 1, ...)
    -> (logits, present key 0, present value 0, ...). The cache is transformers 5's `DynamicCache`, passed as
    ``cache`` (transformers 5.25's name; GPT-2 ignores the old ``past_key_values`` keyword silently)."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, position_ids, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])


def decoder_with_past(model: nn.Module) -> tuple:
    """The module, example arguments, names and dynamic axes of a decoder with its key/value cache. The cache's
    shapes (layers, kv heads, head dim) are read from a real forward pass, not from the config's fields, which
    differ between families."""
    batch, new, past_length = EXAMPLE_BATCH, EXAMPLE_SEQUENCE, EXAMPLE_PAST
    vocab = int(model.config.vocab_size)
    with torch.no_grad():
        prefix = model(input_ids=torch.randint(0, vocab, (batch, past_length)), use_cache=True).cache
    past = [t.detach().clone() for layer in prefix.layers for t in (layer.keys, layer.values)]
    layers = len(past) // 2
    args = (
        torch.randint(0, vocab, (batch, new)),
        torch.ones(batch, past_length + new, dtype=torch.long),
        torch.arange(past_length, past_length + new).expand(batch, new).contiguous(),
        *past,
    )
    cache_names = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{n}" for n in cache_names]
    outputs = ["logits"] + [f"present.{n}" for n in cache_names]
    total = "past_sequence_length + sequence_length"
    axes = {
        "input_ids": SEQUENCE_AXES,
        "attention_mask": {0: "batch_size", 1: total},
        "position_ids": SEQUENCE_AXES,
        "logits": SEQUENCE_AXES,
        **{f"past_key_values.{n}": {0: "batch_size", 2: "past_sequence_length"} for n in cache_names},
        **{f"present.{n}": {0: "batch_size", 2: total} for n in cache_names},
    }
    return DecoderWithPast(model, layers).eval(), args, inputs, outputs, axes


# -- export ------------------------------------------------------------------------------------------------------
def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, axes, opset: int) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,  # see the module docstring
    )


def _export_large(module: nn.Module, args: tuple, path: Path, inputs, outputs, axes, opset: int) -> None:
    """Over protobuf's 2 GB the TorchScript exporter writes one file per weight beside the graph: export into a
    scratch folder and keep the weights in one ``model.onnx_data`` beside ``model.onnx``, as optimum did."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".torch-export-") as scratch:
        scratch_path = Path(scratch) / ONNX_NAME
        _export(module, args, scratch_path, inputs, outputs, axes, opset)
        graph = onnx.load(str(scratch_path))  # reads the scattered weights
        onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_NAME)  # fmt: skip
        shutil.rmtree(scratch, ignore_errors=True)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Export with eager attention (MatMul, Softmax, masks as additions): the pattern onnxruntime's optimiser
    fuses into Attention; PyTorch's SDPA exports as one it does not. The model's own setting is restored after,
    and its eval mode kept (the exporter restores the wrapper's mode, which would put the model in train mode)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    training = model.training
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)
        model.train(training)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The tracer's warnings (Python control flow in transformers' masking code, the TorchScript exporter's
    deprecation) and its prints are expected and noisy."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "transformers")]
    levels = [lg.level for lg in loggers]
    quiet_streams = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet_streams[0], quiet_streams[1]:
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# -- the files beside the graph ----------------------------------------------------------------------------------
def write_companion_files(model: nn.Module, tokenizer, task: str, folder: Path) -> None:
    """What optimum wrote beside the graph and the server reads: ``config.json`` (position limit, pad and eos
    ids), ``generation_config.json`` for decoders (eos ids first), and the tokenizer's files (tokenizer.json,
    tokenizer_config.json, a chat template where there is one)."""
    model.config.save_pretrained(folder)
    generation_config = getattr(model, "generation_config", None)
    if task == "generation" and generation_config is not None:
        generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
