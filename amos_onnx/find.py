"""Find the activation sites of a graph and decide, per site, whether it converts (never mutates).

Composite activations (several elementwise nodes computing one scalar function)
are found first; every node they do not claim goes through the per-op registry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs
from onnx import TensorProto

from .composite import COMPOSITE, NearMiss, elem_type, find_composites
from .gates import Activation, NodeContext, NoMatch, lookup

# The gate always runs in float32; other float types get casts at its edges.
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
# Activations of quantized graphs (onnxruntime's com.microsoft QOperator ops): reported, left alone.
QUANTIZED_ACTIVATIONS = {"QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}
QUANTIZED_REASON = "quantized activation (integer in and out): left alone; convert the float model before quantizing"


def quantized_ops(graph: gs.Graph) -> dict[str, int]:
    """Quantized and integer ops of the graph (QLinear*, QGemm, *Integer, Quantize/DequantizeLinear), by type."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        op = node.op
        if op.startswith(("QLinear", "QGemm", "QAttention", "DynamicQuantize")) or op.endswith("Integer") or \
                op in ("QuantizeLinear", "DequantizeLinear"):
            counts[op] = counts.get(op, 0) + 1
    return counts


@dataclass(frozen=True)
class Site:
    """One activation node: what it computes, or why it is not converted."""

    index: int  # position in graph.nodes of the node that writes the output
    name: str  # node name, or "<op>_<index>" when the node has none
    op: str
    input: str
    output: str
    activation: Activation | None
    reason: str | None = None  # None: the site converts
    nodes: tuple[int, ...] = ()  # every node the gate replaces (a composite has several)
    dtype: int = TensorProto.FLOAT  # ONNX element type of input and output
    rank: int | None = None  # rank of the input, when known
    channels: int | None = None  # static size of the input's axis 1 (the ONNX channel axis), when rank >= 2
    graph: tuple[tuple[int, str], ...] = ()  # path to a subgraph: (node index, attribute name) per level

    @property
    def converts(self) -> bool:
        return self.reason is None


def _rank(tensor: gs.Tensor | None) -> int | None:
    shape = tensor.shape if tensor is not None else None
    return len(shape) if shape is not None else None


def _channels(tensor: gs.Tensor | None) -> int | None:
    """The static size of axis 1 (ONNX's channel axis: N, C, ...) of a tensor of rank 2 or more, else None."""
    shape = tensor.shape if tensor is not None else None
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or shape[1] < 1:
        return None
    return int(shape[1])


def _dtype(tensor: gs.Tensor | None) -> tuple[int, str | None]:
    """(element type, reason it cannot convert or None)."""
    kind = elem_type(tensor)
    if kind is None or kind in FLOAT_TYPES:
        return kind or TensorProto.FLOAT, None
    name = TensorProto.DataType.Name(kind).lower()
    return kind, f"input type is {name}; only floating-point activations convert"


def _site(index: int, node: gs.Node, opset: int, only: set[str] | None, skip: set[str]) -> Site | None:
    name = node.name or f"{node.op}_{index}"
    if node.domain == "com.microsoft" and node.op in QUANTIZED_ACTIVATIONS and node.inputs and node.outputs:
        return Site(index, name, node.op, node.inputs[0].name, node.outputs[0].name, None, QUANTIZED_REASON, (index,))
    matcher = lookup(node.domain or "", node.op, opset)
    if matcher is None:
        return None
    x, y = node.inputs[0].name, node.outputs[0].name
    if only is not None and node.op not in only:
        return Site(index, name, node.op, x, y, None, "not in --only", (index,))
    if node.op in skip:
        return Site(index, name, node.op, x, y, None, "in --skip", (index,))
    result = matcher(NodeContext(node, opset))
    if isinstance(result, NoMatch):
        return Site(index, name, node.op, x, y, None, result.reason, (index,))
    dtype, reason = _dtype(node.inputs[0])
    return Site(index, name, node.op, x, y, result, reason, (index,), dtype, _rank(node.inputs[0]),
                _channels(node.inputs[0]))


def find_sites(
    graph: gs.Graph, opset: int, only: set[str] | None = None, skip: set[str] | None = None
) -> tuple[list[Site], list[NearMiss]]:
    """Every activation in the graph, its subgraphs (If, Loop, Scan bodies) included, and the near misses."""
    skip = skip or set()
    sites: list[Site] = []
    claimed: set[int] = set()
    misses: list[NearMiss] = []
    if (only is None or COMPOSITE in only) and COMPOSITE not in skip:
        composites, misses = find_composites(graph, opset)
        tensors = graph.tensors()
        for c in composites:
            out = c.nodes[-1]
            node = graph.nodes[out]
            name = node.name or f"{node.op}_{out}"
            dtype, reason = _dtype(tensors.get(c.x))
            sites.append(Site(out, name, c.kind, c.x, c.y, c.activation, reason, c.nodes, dtype,
                              _rank(tensors.get(c.x)), _channels(tensors.get(c.x))))
            claimed.update(c.nodes)
    for index, node in enumerate(graph.nodes):
        if index in claimed:
            continue
        site = _site(index, node, opset, only, skip)
        if site is not None:
            sites.append(site)
    sites.sort(key=lambda s: s.index)
    for index, node in enumerate(graph.nodes):
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                inner, inner_misses = find_sites(value, opset, only, skip)
                prefix = f"{node.name or f'{node.op}_{index}'}/{attr}"
                sites += [replace(s, name=f"{prefix}/{s.name}", graph=((index, attr), *s.graph)) for s in inner]
                misses += [replace(m, node=f"{prefix}/{m.node}") for m in inner_misses]
    return sites, misses
