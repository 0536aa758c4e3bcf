"""Write a tied embedding / LM-head matrix once.

A tied LM head reads the embedding transposed, and every exporter writes that transpose as a second
initializer: PyTorch's TorchScript exporter folds `Transpose(embedding)` into a constant at export
(`onnx::MatMul_*`, (hidden, vocab)), and when an exporter keeps the Transpose (optimum's did), onnxruntime's
transformer optimiser folds it in its basic-level session. Either way SmolLM2's 113 MB embedding would be
written twice (652 MB for 538 MB of weights). `share_tied_lm_head` undoes it after optimisation: the LM head
becomes `com.microsoft.FusedMatMul(x, E, transB=1)` on the embedding itself, and the transposed copy is dropped
(found by value: it equals the transpose of a Gather's initializer, whatever its name). The logits are
bit-identical (the same products, read in the other order), and onnxruntime's CPU and CUDA kernels run
FusedMatMul. The weight-only quantiser touches only MatMul nodes, so a quantised decoder keeps its head in
fp32, shared with the embedding, for free.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def share_tied_lm_head(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every MatMul whose weight initializer equals the transpose of an embedding (a Gather's
    initializer); returns how many were rewritten (0 for untied models and classifiers)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    embeddings = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in initializers:
            tensor = initializers[node.input[0]]
            if len(tensor.dims) == 2:
                embeddings.setdefault(tuple(tensor.dims), []).append(tensor)
    if not embeddings:
        return 0
    rewritten, dropped = 0, set()
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        if len(weight.dims) != 2:
            continue
        candidates = embeddings.get((weight.dims[1], weight.dims[0]), [])
        if not candidates:
            continue
        weight_array = numpy_helper.to_array(weight)
        match = next((e for e in candidates if np.array_equal(numpy_helper.to_array(e).T, weight_array)), None)
        if match is None:
            continue
        fused = helper.make_node(
            "FusedMatMul", [node.input[0], match.name], list(node.output), name=f"{node.name}_tied",
            domain=MS_DOMAIN, alpha=1.0, transA=0, transB=1,
        )  # fmt: skip
        graph.node[index].CopyFrom(fused)  # same place: the graph stays topologically sorted
        dropped.add(weight.name)
        rewritten += 1
    still_used = {name for node in graph.node for name in node.input}
    for name in dropped - still_used:
        graph.initializer.remove(initializers[name])
    if rewritten and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return rewritten
