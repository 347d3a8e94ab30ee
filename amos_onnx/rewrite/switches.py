"""A switched model (fit.focus.switched_model) with its switches fixed: each If on a fixed switch replaced by the
nodes of the branch it takes, what no output needs then left out, and the switches no longer inputs.

onnxruntime runs an If's branch as a graph of its own: the nodes around it lose their fusions and the NCHWc layout
of its convolutions, and every activation is computed beside its gate (the else branch reads it). On PP-OCRv4 rec's
256 calibration lines, one pass of the switched model with every gate on took 1.7x as long as the converted
model's; fixed, 1.04x (2.2x without leaving out the activations its gates replace). The compensation walks its
streams with every gate off or every gate on, so each of its segments is built fixed, once per setting.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from amos_onnx.rewrite.segments import outer_names


def fixed_values(feeds: Mapping[str, np.ndarray]) -> dict[str, bool]:
    """The feeds that are switches a model can be fixed at (boolean scalars), by name."""
    return {name: bool(value) for name, value in feeds.items()
            if isinstance(value, np.ndarray) and value.dtype == np.bool_ and value.ndim == 0}


def fix_switches(model: onnx.ModelProto, values: Mapping[str, bool]) -> onnx.ModelProto:
    """A copy of `model` in which every top-level If whose condition is a graph input named in `values` is
    replaced by the nodes of the branch that value takes (then_branch for True), writing into the If's outputs;
    without the nodes no graph output then needs, and without those inputs. `model` itself when it has no such
    If."""
    inputs = {i.name for i in model.graph.input}
    fixed = {name: on for name, on in values.items() if name in inputs}
    if not any(_switched(node, fixed) for node in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if not _switched(node, fixed):
            nodes.append(node)
            continue
        branch = next(a.g for a in node.attribute
                      if a.name == ("then_branch" if fixed[node.input[0]] else "else_branch"))
        graph.initializer.extend(branch.initializer)
        nodes.extend(_taken(branch, node))
    needed = {o.name for o in graph.output}
    live: list[onnx.NodeProto] = []
    for node in reversed(nodes):  # nodes are in topological order: a node's readers come after it
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(outer_names(node))
    del graph.node[:]
    graph.node.extend(reversed(live))
    kept = [i for i in graph.input if i.name not in fixed]
    del graph.input[:]
    graph.input.extend(kept)
    return copy


def _taken(branch: onnx.GraphProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The branch's nodes writing into the If's outputs: a branch output made by one of them (and read by no other)
    renamed to the If's, any other carried there by an Identity."""
    taken = list(branch.node)
    read = {name for n in taken for name in outer_names(n)}
    for i, (made, out) in enumerate(zip(branch.output, node.output)):
        maker = next((n for n in taken if made.name in n.output), None)
        if maker is not None and made.name not in read:
            maker.output[list(maker.output).index(made.name)] = out
        else:
            taken.append(helper.make_node("Identity", [made.name], [out], name=f"{node.name}/taken{i}"))
    return taken


def _switched(node: onnx.NodeProto, fixed: Mapping[str, bool]) -> bool:
    return node.op_type == "If" and node.domain in ("", "ai.onnx") and bool(node.input) and node.input[0] in fixed
