"""Find the activation sites of a graph and decide, per site, whether it converts (never mutates).

Composite activations (several elementwise nodes computing one scalar function)
are found first; every node they do not claim goes through the per-op registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs
from onnx import TensorProto

from amos_onnx.find.composite import COMPOSITE, NearMiss, elem_type, find_composites
from amos_onnx.find.gates import Activation, NodeContext, NoMatch, lookup
from amos_onnx.find.recurrent import RECURRENT_ACTIVATIONS, recurrent_reason
from amos_onnx.options import FindOptions

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

    name: str  # node name, or "<op>_<position>" when the node has none; prefixed by a subgraph's path
    op: str
    input: str
    output: str  # the tensor the activation writes: with `graph`, the site's identity
    activation: Activation | None
    reason: str | None = None  # None: the site converts
    nodes: tuple[str, ...] = ()  # every node the gate replaces, by its first output (a composite has several)
    dtype: int = TensorProto.FLOAT  # ONNX element type of input and output
    rank: int | None = None  # rank of the input, when known
    channels: int | None = None  # static size of the input's channel axis (channel_axis), when rank >= 2
    channel_axis: int | None = None  # the input's feature axis: 1 (N, C, ...), or the last after MatMul and the like
    graph: tuple[tuple[str, str], ...] = ()  # path to a subgraph: (node's first output, attribute name) per level

    @property
    def converts(self) -> bool:
        return self.reason is None

    @property
    def samples(self) -> str:
        """The key of this site's calibration samples: its input tensor; inside a subgraph, prefixed by the path
        there (a branch sees its input only when it runs, and another branch may read the same tensor)."""
        if not self.graph:
            return self.input
        return "".join(f"{holder}/{attr}/" for holder, attr in self.graph) + self.input


def _rank(tensor: gs.Tensor | None) -> int | None:
    shape = tensor.shape if tensor is not None else None
    return len(shape) if shape is not None else None


# Producers whose output holds its features on the last axis ([batch, tokens, features]); after any other op
# ONNX's convention (N, C, ...) puts them on axis 1.
LAST_AXIS_OPS = {"MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "LayerNormalization", "SimplifiedLayerNormalization",
                 "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"}
# Elementwise ops looked through on the way to that producer (a bias, a scale, a cast, a residual add).
LOOKED_THROUGH = {"Add", "Sub", "Mul", "Div", "Cast", "Identity", "Dropout"}


def feature_axis(tensor: gs.Tensor, rank: int) -> int:
    """Where a tensor's features (channels) lie: the last axis when it comes from a MatMul, Gemm or layer norm
    (through elementwise ops: its first input that is computed, not a constant), else axis 1."""
    for _ in range(32):
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None:
            break
        if producer.op in LAST_AXIS_OPS:
            return rank - 1
        if producer.op not in LOOKED_THROUGH:
            break
        computed = [t for t in producer.inputs
                    if isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op != "Constant"]
        if not computed:
            break
        tensor = computed[0]
    return 1


def _channels(tensor: gs.Tensor | None, axis: int | None = None) -> tuple[int | None, int | None]:
    """(channel axis, its static size) of a tensor of rank 2 or more: `axis` (negative counts from the end) or
    its feature_axis; (None, None) when the rank is unknown or below 2, the axis out of range or its size not
    static."""
    shape = tensor.shape if tensor is not None else None
    if tensor is None or shape is None or len(shape) < 2:
        return None, None
    rank = len(shape)
    axis = feature_axis(tensor, rank) if axis is None else axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or not isinstance(shape[axis], int) or shape[axis] < 1:
        return None, None
    return axis, int(shape[axis])


def _dtype(tensor: gs.Tensor | None) -> tuple[int, str | None]:
    """(element type, reason it cannot convert or None)."""
    kind = elem_type(tensor)
    if kind is None or kind in FLOAT_TYPES:
        return kind or TensorProto.FLOAT, None
    name = TensorProto.DataType.Name(kind).lower()
    return kind, f"input type is {name}; only floating-point activations convert"


def node_id(node: gs.Node) -> str:
    """A node's identity within its graph: its first output tensor's name."""
    return node.outputs[0].name if node.outputs else ""


def _site(index: int, node: gs.Node, opset: int, options: FindOptions, left: Mapping[str, str]) -> Site | None:
    name = node.name or f"{node.op}_{index}"
    own = (node_id(node),)
    if node.domain == "com.microsoft" and node.op in QUANTIZED_ACTIVATIONS and node.inputs and node.outputs:
        return Site(name, node.op, node.inputs[0].name, node.outputs[0].name, None, QUANTIZED_REASON, own)
    if not node.domain and node.op in RECURRENT_ACTIVATIONS and node.inputs and node.outputs:
        y = next((t.name for t in node.outputs if t.name), "")
        return Site(name, node.op, node.inputs[0].name, y, None, recurrent_reason(node, left.get(own[0])), own)
    matcher = lookup(node.domain or "", node.op, opset)
    if matcher is None:
        return None
    x, y = node.inputs[0].name, node.outputs[0].name
    if options.only is not None and node.op not in options.only:
        return Site(name, node.op, x, y, None, "not in --only", own)
    if node.op in (options.skip or ()):
        return Site(name, node.op, x, y, None, "in --skip", own)
    result = matcher(NodeContext(node, opset))
    if isinstance(result, NoMatch):
        return Site(name, node.op, x, y, None, result.reason, own)
    dtype, reason = _dtype(node.inputs[0])
    axis, channels = _channels(node.inputs[0], options.channel_axis)
    return Site(name, node.op, x, y, result, reason, own, dtype, _rank(node.inputs[0]), channels, axis)


def _composite_sites(graph: gs.Graph, opset: int, options: FindOptions,
                     claimed: set[int]) -> tuple[list[tuple[int, Site]], list[NearMiss]]:
    """The composite activations of one graph as (position of the writing node, site); `claimed` gets the
    positions of every node they replace."""
    if (options.only is not None and COMPOSITE not in options.only) or COMPOSITE in (options.skip or ()):
        return [], []
    composites, misses = find_composites(graph, opset)
    tensors = graph.tensors()
    found = []
    for c in composites:
        out = c.nodes[-1]
        node = graph.nodes[out]
        dtype, reason = _dtype(tensors.get(c.x))
        axis, channels = _channels(tensors.get(c.x), options.channel_axis)
        nodes = tuple(node_id(graph.nodes[i]) for i in c.nodes)
        found.append((out, Site(node.name or f"{node.op}_{out}", c.kind, c.x, c.y, c.activation, reason, nodes, dtype,
                                _rank(tensors.get(c.x)), channels, axis)))
        claimed.update(c.nodes)
    return found, misses


def find_sites(graph: gs.Graph, opset: int, options: FindOptions | None = None,
               left: Mapping[str, str] | None = None) -> tuple[list[Site], list[NearMiss]]:
    """Every activation in the graph, its subgraphs (If, Loop, Scan bodies) included, and the near misses, in
    graph order. options.channel_axis: every site's channel axis (negative: from the end) instead of its input's
    feature_axis. `left`: why each recurrent op in the graph was not lowered, by node id (rewrite.recurrent)."""
    options, left = options or FindOptions(), left or {}
    claimed: set[int] = set()
    found, misses = _composite_sites(graph, opset, options, claimed)
    for index, node in enumerate(graph.nodes):
        if index in claimed:
            continue
        site = _site(index, node, opset, options, left)
        if site is not None:
            found.append((index, site))
    sites = [site for _, site in sorted(found, key=lambda pair: pair[0])]
    for index, node in enumerate(graph.nodes):
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                inner, inner_misses = find_sites(value, opset, options, left)
                prefix = f"{node.name or f'{node.op}_{index}'}/{attr}"
                path = (node_id(node), attr)
                sites += [replace(s, name=f"{prefix}/{s.name}", graph=(path, *s.graph)) for s in inner]
                misses += [replace(m, node=f"{prefix}/{m.node}") for m in inner_misses]
    return sites, misses
