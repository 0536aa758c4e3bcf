"""ONNX Runtime LoRA adapters: one base graph whose LoRA and head tensors are graph inputs, and one
``.onnx_adapter`` file per checkpoint that feeds them (onnxruntime's `AdapterFormat`; chosen per call with
``RunOptions.add_active_adapter``).

The base graph is the optimised export of the base model (with a placeholder head), rewritten here:

- every LoRA target ``y = x·Wᵀ`` (a MatMul or Gemm whose weight initializer holds the base layer's W) gains the
  branch ``y + (x·a)·b``, with ``a`` (in x rank) and ``b`` (rank x out, the LoRA scaling folded in) graph
  inputs. Their defaults are empty (rank 0), so without an adapter the graph is the base model. The branch
  sits after onnxruntime's fusions, which therefore still apply (BERT-family graphs are fused with
  `MultiHeadAttention`, which keeps the Q/K/V MatMuls apart, so that the branch can reach them);
- every replaced tensor becomes an input in place of its initializer: the head (the classifier, and the
  pooler where the model has one), with an empty label axis by default, so that without an adapter a
  classifier returns no logits; and the static bottleneck of a merged adapter mixture (down, up and their
  biases), with an empty bottleneck axis by default, so that without an adapter it adds nothing.

Each input's rank, bottleneck width and a classifier's label count are symbolic axes, so adapters of
different ranks, widths and label sets share one base. The weights are found by value, not by name: the exporter
and optimiser rename and transpose initializers, but they do not change their values. The exporter also writes
equal tensors once (every all-zero bias of a model as one initializer): so each value must be held by exactly
one initializer, used by that layer alone, and the caller gives each replaced tensor a value of its own
(`adapter_export._mark_replaced`); an input put in place of a shared initializer would feed every layer that
shares it.

A generation base whose adapter inputs are all LoRA pairs on 3-D MatMuls also gets a multi-adapter graph
(`multi_adapter_graph`), in which each row of a batch picks its own adapter: every ``{m}.lora_a`` input is
replaced by a stack of every loaded adapter's factors, ``{m}.lora_a.stack`` (slots x in x rank, ranks padded
with zeros to one width), and a ``Gather`` of the rows' slots (``adapter_index``, one per row) whose output keeps
the name ``{m}.lora_a`` (batch x in x rank); likewise ``lora_b``. The branch nodes stay as they are: a MatMul of
x (batch x seq x in) by per-row factors (batch x in x rank) multiplies each row by its own. Zero columns of a
and zero rows of b add nothing, so the padding is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.export_folder import ADAPTER_INDEX_INPUT, ADAPTER_STACK_SUFFIX

LORA_A, LORA_B, HEAD, BOTTLENECK = "lora_a", "lora_b", "head", "bottleneck"


@dataclass(frozen=True)
class AdapterInput:
    """One graph input an adapter feeds: its name, what it is, the module it belongs to, and its layout."""

    name: str
    kind: str  # LORA_A | LORA_B | HEAD | BOTTLENECK
    module: str  # the PyTorch module (LoRA) or parameter (head, bottleneck) name
    shape: list  # ints and symbolic axis names
    transposed: bool = False  # head and bottleneck tensors: the graph holds the parameter transposed


@dataclass(frozen=True)
class ReplacedTensor:
    """A tensor of the graph that each adapter brings its own of: its value (as PyTorch holds it), its kind,
    and the axis (PyTorch layout) whose size may differ between adapters, with that axis's symbolic name."""

    value: np.ndarray
    kind: str  # HEAD | BOTTLENECK
    axis: int | None = None
    axis_name: str | None = None


def _value_index(graph: onnx.GraphProto) -> dict[tuple, list[onnx.TensorProto]]:
    by_shape: dict[tuple, list[onnx.TensorProto]] = {}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            by_shape.setdefault(tuple(init.dims), []).append(init)
    return by_shape


def _find(by_shape: dict, value: np.ndarray, what: str) -> tuple[onnx.TensorProto, bool]:
    """The one float initializer equal to ``value`` (as it is, or transposed): (initializer, transposed)."""
    found = []
    for transposed, candidate in ((False, value), (True, value.T)):
        if transposed and value.ndim != 2:
            continue
        for init in by_shape.get(tuple(candidate.shape), []):
            if np.array_equal(numpy_helper.to_array(init), candidate):
                found.append((init, transposed))
    if len(found) != 1:
        raise AdamixError(
            f"cannot place the adapter input for {what}: {len(found)} initializers of the optimised graph hold "
            "its value (expected exactly one)"
        )
    return found[0]


def add_adapter_inputs(
    model: onnx.ModelProto, lora_weights: dict[str, np.ndarray], replaced: dict[str, ReplacedTensor]
) -> list[AdapterInput]:
    """Rewrite ``model`` in place (see the module docstring). ``lora_weights``: LoRA module name -> its base
    layer's weight (out x in, as PyTorch holds it); ``replaced``: parameter name -> the tensor an adapter
    replaces. Returns the inputs."""
    graph = model.graph
    by_shape = _value_index(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inputs: list[AdapterInput] = []
    branch_nodes: list[onnx.NodeProto] = []
    placed: dict[str, str] = {}  # initializer -> what it was found for

    def place(what: str, value: np.ndarray) -> tuple[onnx.TensorProto, bool]:
        init, transposed = _find(by_shape, value, what)
        if init.name in placed:
            raise AdamixError(f"cannot place the adapter input for {what}: the optimised graph holds its value in "
                              f"the initializer of {placed[init.name]} (equal tensors are written once)")  # fmt: skip
        placed[init.name] = what
        return init, transposed

    for index, (module, weight) in enumerate(sorted(lora_weights.items())):
        init, transposed = place(f"LoRA module {module}", weight)
        users = consumers.get(init.name, [])
        if len(users) != 1 or not _is_projection(users[0], init.name, transposed):
            raise AdamixError(
                f"cannot place the adapter input for LoRA module {module}: its weight is not one MatMul's or Gemm's"
            )
        matmul = users[0]
        d_out, d_in = weight.shape
        rank = f"rank_{index}"
        a, b = (
            AdapterInput(f"{module}.lora_a", LORA_A, module, [d_in, rank]),
            AdapterInput(f"{module}.lora_b", LORA_B, module, [rank, d_out]),
        )
        _add_input(graph, a.name, a.shape, np.zeros((d_in, 0), np.float32))
        _add_input(graph, b.name, b.shape, np.zeros((0, d_out), np.float32))
        out = matmul.output[0]
        base_out = f"{out}/base"
        matmul.output[0] = base_out
        branch_nodes += [
            helper.make_node("MatMul", [matmul.input[0], a.name], [f"{out}/xa"], name=f"{module}/lora_xa"),
            helper.make_node("MatMul", [f"{out}/xa", b.name], [f"{out}/xab"], name=f"{module}/lora_xab"),
            helper.make_node("Add", [base_out, f"{out}/xab"], [out], name=f"{module}/lora_add"),
        ]
        inputs += [a, b]
    for name, tensor in sorted(replaced.items()):
        init, transposed = place(f"{tensor.kind} parameter {name}", tensor.value)
        users = consumers.get(init.name, [])
        if len(users) != 1:  # a head or bottleneck tensor is one layer's: more users share its value
            raise AdamixError(
                f"cannot place the adapter input for {tensor.kind} parameter {name}: its initializer feeds "
                f"{len(users)} nodes ({', '.join(n.name or n.op_type for n in users[:4])}), one layer's takes one"
            )
        shape = list(init.dims)
        default_shape = list(shape)
        if tensor.axis is not None:
            axis = 1 - tensor.axis if transposed else tensor.axis  # the graph's layout
            shape[axis], default_shape[axis] = tensor.axis_name, 0
        graph.initializer.remove(init)
        _add_input(graph, name, shape, np.zeros(default_shape, np.float32), rename=(init.name, consumers))
        inputs.append(AdapterInput(name, tensor.kind, name, shape, transposed))
    graph.node.extend(branch_nodes)
    _sort_topologically(graph)
    # the optimiser's inferred shapes know one label count; onnxruntime infers them again from the inputs
    del graph.value_info[:]
    if any(i.kind == HEAD for i in inputs):
        for output in graph.output:
            dims = output.type.tensor_type.shape.dim
            if output.name == "logits" and len(dims) == 2:
                dims[1].dim_param = "labels"
    return inputs


def multi_adapter_refusal(model: onnx.GraphProto | onnx.ModelProto, inputs: list[AdapterInput]) -> str | None:
    """Why the base graph ``model`` (rewritten by `add_adapter_inputs`, with these ``inputs``) gets no
    multi-adapter graph, or None when it can. A head or bottleneck tensor is a whole tensor of each adapter's
    own shape, not a per-row factor; a Gemm takes 2-D x (GPT-2's attention output: rows and positions flattened
    into one axis), so a row cannot pick its factors there."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    whole = sorted({i.kind for i in inputs if i.kind not in (LORA_A, LORA_B)})
    if whole:
        return f"it takes {' and '.join(whole)} inputs (whole tensors of each adapter's shape, not LoRA factors)"
    if not inputs:
        return "it takes no LoRA inputs"
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for item in inputs:
        if item.kind != LORA_A:
            continue
        target = _lora_target(item.name, producers, consumers)
        if target is None or target.op_type != "MatMul":
            kind = f"a {target.op_type}" if target is not None else "a layer not found"
            return (
                f"its LoRA on {item.module} adds to {kind}, not a 3-D MatMul: a row cannot pick its factors there"
            )
    return None


def _lora_target(a_name: str, producers: dict, consumers: dict) -> onnx.NodeProto | None:
    """The projection whose output a LoRA branch adds to: ``a`` -> MatMul(x·a) -> MatMul(·b) -> Add(base, ·)."""
    chain = consumers.get(a_name, [])
    if len(chain) != 1 or chain[0].op_type != "MatMul":
        return None
    xab = consumers.get(chain[0].output[0], [])
    if len(xab) != 1:
        return None
    add = consumers.get(xab[0].output[0], [])
    if len(add) != 1 or add[0].op_type != "Add":
        return None
    return producers.get(add[0].input[0])


def multi_adapter_graph(model: onnx.ModelProto, inputs: list[AdapterInput]) -> onnx.ModelProto:
    """A copy of the base graph ``model`` in which rows of one batch run different adapters (see the module
    docstring); ``model`` is left as it is. Its initializers stay as they are, external data references
    included, so a copy of a base saved with external data reads the same weights file. The caller has checked
    `multi_adapter_refusal`."""
    multi = onnx.ModelProto()
    multi.CopyFrom(model)
    graph = multi.graph
    lora = {i.name: i for i in inputs if i.kind in (LORA_A, LORA_B)}
    kept = [i for i in graph.input if i.name not in lora]
    del graph.input[:]
    graph.input.extend(kept)
    defaults = [i for i in graph.initializer if i.name not in lora]  # the empty defaults go with the inputs
    del graph.initializer[:]
    graph.initializer.extend(defaults)
    graph.input.append(helper.make_tensor_value_info(ADAPTER_INDEX_INPUT, TensorProto.INT64, ["batch_size"]))
    gathers = []
    for name, item in sorted(lora.items()):
        # in x rank or rank x out, one rank for every module: the stacks pad each adapter to the widest
        shape = [item.shape[0], "adapter_rank"] if item.kind == LORA_A else ["adapter_rank", item.shape[1]]
        stack = name + ADAPTER_STACK_SUFFIX
        graph.input.append(helper.make_tensor_value_info(stack, TensorProto.FLOAT, ["adapter_slots", *shape]))
        gathers.append(helper.make_node("Gather", [stack, ADAPTER_INDEX_INPUT], [name], name=f"{name}/gather",
                                        axis=0))  # fmt: skip
    # first, so that producers come before their consumers as ONNX requires
    nodes = [*gathers, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return multi


def _is_projection(node: onnx.NodeProto, weight: str, transposed: bool) -> bool:
    """``node`` computes x·Wᵀ with ``weight`` as its input 1 (Wᵀ stored, ``transposed``; or W stored, with a
    Gemm's transB), so that ``node + (x·a)·b`` is the LoRA layer: a MatMul, or a Gemm (2-D input: GPT-2's
    attention output) whose x is not transposed and not scaled (its bias, if any, then adds as before)."""
    if len(node.input) < 2 or node.input[1] != weight:
        return False
    if node.op_type == "MatMul":
        return transposed
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return (
            attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("transB", 0) == (not transposed)
        )
    return False


def _add_input(graph, name: str, shape: list, default: np.ndarray, rename=None) -> None:
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph.initializer.append(numpy_helper.from_array(default, name))
    if rename:
        old, consumers = rename
        for node in consumers.get(old, []):
            for i, used in enumerate(node.input):
                if used == old:
                    node.input[i] = name


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """ONNX requires producers before consumers; the branches were appended at the end."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        left = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise AdamixError("the rewritten graph has a cycle or an unknown input")
        pending = left
    del graph.node[:]
    graph.node.extend(ordered)
