"""Graph edits for the compensation (compensate.bias, compensate.reconstruct): biases fed as inputs for measuring,
corrected biases and refitted weights written."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from amos_onnx.rewrite.graph import _subgraphs, node_id

Slot = tuple[str, int, str, int, int]  # node (node_id), input index, its output, element type, channels


def bias_inputs(model: onnx.ModelProto, slots: list[Slot]) -> dict[str, str]:
    """In place: each slot's node reads its bias from a new graph input (a vector of its channels), and its output
    is a graph output too. The bias input's name by node."""
    graph = model.graph
    nodes = {node_id(n): n for n in graph.node}
    outputs = {o.name for o in graph.output}
    names: dict[str, str] = {}
    for i, (key, slot, output, dtype, channels) in enumerate(slots):
        name = f"amos_bias_{i}/{nodes[key].name or key}"
        _set_input(nodes[key], slot, name)
        graph.input.append(helper.make_tensor_value_info(name, dtype, [channels]))
        if output not in outputs:
            graph.output.append(helper.make_tensor_value_info(output, dtype, None))
            outputs.add(output)
        names[key] = name
    return names


def set_constants(model: onnx.ModelProto, constants: list[tuple[str, str, int, str, np.ndarray]],
                  kind: str = "bias", prune: bool = False) -> list[str]:
    """In place: each (node, label, input index, the constant's name there or "", values) gets its values, those
    below the normal range of their float type written as 0 (normal_or_zero). An initializer that only its node
    reads is replaced; a shared or absent one, or one a Constant node computes, gets a new initializer named
    `label`/amos/`kind`. With `prune`, a top-level Constant node so left unread is removed (paddle2onnx's weights:
    a saved file would carry both; a walk's model keeps it, its segments index the nodes). The initializers
    written, by name."""
    uses: dict[str, int] = {o.name: 1 for o in model.graph.output}  # a graph output is read
    for node in _every_node(model.graph):
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {node_id(n): n for n in model.graph.node}
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    written = []
    for key, label, slot, bias, values in constants:
        values = normal_or_zero(values)
        if bias in inits and uses.get(bias, 0) == 1:
            inits[bias].CopyFrom(numpy_helper.from_array(values, bias))
            written.append(bias)
            continue
        name, i = f"{label}/amos/{kind}", 1
        while name in taken:
            name, i = f"{label}/amos/{kind}_{i}", i + 1
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(values, name))
        _set_input(nodes[key], slot, name)
        uses[bias] = uses.get(bias, 0) - 1  # the node reads `name` now
        written.append(name)
    if prune:
        replaced = {bias for _, _, _, bias, _ in constants if bias}
        for node in [n for n in model.graph.node if n.op_type == "Constant" and len(n.output) == 1
                     and n.output[0] in replaced and uses.get(n.output[0], 0) == 0]:
            model.graph.node.remove(node)
    return written


def normal_or_zero(values: np.ndarray) -> np.ndarray:
    """`values` with those below the normal range of their float type set to 0 (a copy when any is). A refit
    leaves about 1e-40 where a pruned filter's weights were 0, and a subnormal weight makes each of its products
    subnormal: PP-OCRv4 rec's Convs ran 16x slower in onnxruntime with them."""
    if not np.issubdtype(values.dtype, np.floating):
        return values
    small = (values != 0) & (np.abs(values) < np.finfo(values.dtype).tiny)
    return np.where(small, np.zeros((), values.dtype), values) if small.any() else values


def _set_input(node: onnx.NodeProto, slot: int, name: str) -> None:
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name


def _every_node(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of its subgraphs (which may read the graph's initializers)."""
    found = []
    for node in graph.node:
        found.append(node)
        for sub in _subgraphs(node):
            found += _every_node(sub)
    return found
