"""A model cut into consecutive pieces by level, each a model of its own (compensate.walk runs them in turn).

A tensor's level is the deepest level of the sites upstream of it (compensate.targets.site_levels). Cutting
the top-level graph where the level reaches each of a few chosen values gives segments that run one after the
other, each reading only graph inputs and tensors the segments before it made: the network can then be walked
level by level over cached tensors, each node computed once per walk, instead of once per level.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import onnx
from onnx import helper

from amos_onnx.rewrite.graph import _subgraphs


@dataclass(frozen=True)
class Segment:
    """Nodes (indices into the graph's node list, in order) that read `inputs` (graph inputs or tensors of
    earlier segments) and make `outputs` (the tensors later segments or the graph's outputs read). Constant nodes
    belong to no segment: each segment model holds those it reads (weights some exporters write as Constant
    nodes then stay constants, which onnxruntime prepacks, not inputs)."""

    nodes: tuple[int, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def outer_names(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and what its subgraphs read from outside themselves."""
    names = [n for n in node.input if n]
    for graph in _subgraphs(node):
        names += sorted(_free(graph))
    return names


def _free(graph: onnx.GraphProto) -> set[str]:
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: set[str] = set()
    for node in graph.node:
        free.update(n for n in outer_names(node) if n not in made)
        made.update(node.output)
    free.update(o.name for o in graph.output if o.name not in made)
    return free


def _constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and not node.input and node.domain in ("", "ai.onnx")


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The graph's Constant nodes by their output."""
    return {node.output[0]: node for node in graph.node if _constant(node) and node.output}


def split(model: onnx.ModelProto, levels: dict[str, int], cuts: list[int], keep: set[str]) -> list[Segment]:
    """The top-level graph in len(cuts) + 1 segments: a node whose inputs reach level l (`levels`: by tensor; a
    site's output its site's level, site_levels') goes to segment bisect_right(cuts, l). Nodes are in
    topological order and levels only grow along edges, so every segment reads only earlier ones. `keep`: tensors
    to return from the segment that makes them besides those read later (measured ones)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | set(_constant_nodes(graph))
    owner: dict[str, int] = {}
    placed: list[list[int]] = [[] for _ in range(len(cuts) + 1)]
    reads: list[set[str]] = [set() for _ in placed]
    for index, node in enumerate(graph.node):
        if _constant(node):
            continue
        names = outer_names(node)
        level = max((levels.get(n, 0) for n in names), default=0)
        part = max([bisect.bisect_right(cuts, level), *(owner.get(n, 0) for n in names)])
        placed[part].append(index)
        reads[part].update(n for n in names if n not in constants)
        for out in node.output:
            if out:
                owner[out] = part
    wanted = {o.name for o in graph.output} | keep
    segments: list[Segment] = []
    later: set[str] = set()  # what the segments after this one read
    for part in reversed(range(len(placed))):
        nodes = placed[part]
        made = {out for i in nodes for out in graph.node[i].output if out}
        inputs = tuple(sorted(n for n in reads[part] if n not in made))
        segments.insert(0, Segment(tuple(nodes), inputs, tuple(sorted(made & (later | wanted)))))
        later |= reads[part]
    return segments


def segment_model(model: onnx.ModelProto, segment: Segment, types: dict[str, int]) -> onnx.ModelProto:
    """A model of one segment: its nodes, the initializers they read, its inputs typed by `types` (element type
    by name; shapes left open) and its outputs."""
    graph = model.graph
    nodes = [graph.node[i] for i in segment.nodes]
    read = {n for node in nodes for n in outer_names(node)}
    made = _constant_nodes(graph)
    nodes = [made[n] for n in sorted(read & set(made))] + nodes
    inits = [t for t in graph.initializer if t.name in read and t.name not in segment.inputs]
    inputs = [helper.make_tensor_value_info(name, types[name], None) for name in segment.inputs]
    outputs = [onnx.ValueInfoProto(name=name) for name in segment.outputs]  # onnxruntime infers their types
    body = helper.make_graph(nodes, f"{graph.name or 'graph'}_segment", inputs, outputs, inits)
    piece = helper.make_model(body, opset_imports=model.opset_import, ir_version=model.ir_version)
    piece.functions.extend(model.functions)
    return piece
