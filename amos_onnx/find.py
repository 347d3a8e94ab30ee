"""Find the activation sites of a graph and decide, per site, whether it converts (never mutates).

Composite activations (several elementwise nodes computing one scalar function)
are found first; every node they do not claim goes through the per-op registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .composite import COMPOSITE, NearMiss, find_composites
from .gates import Activation, NodeContext, NoMatch, lookup

FLOAT_TYPES = (np.float32,)


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

    @property
    def converts(self) -> bool:
        return self.reason is None


def _dtype_reason(tensor: gs.Tensor | None) -> str | None:
    dtype = tensor.dtype if tensor is not None else None
    if dtype is None:
        return None
    try:
        if np.dtype(dtype) in FLOAT_TYPES:
            return None
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    return f"input type is {name}; only float32 activations convert"


def _site(index: int, node: gs.Node, opset: int, only: set[str] | None, skip: set[str]) -> Site | None:
    matcher = lookup(node.domain or "", node.op, opset)
    if matcher is None:
        return None
    name = node.name or f"{node.op}_{index}"
    x, y = node.inputs[0].name, node.outputs[0].name
    if only is not None and node.op not in only:
        return Site(index, name, node.op, x, y, None, "not in --only", (index,))
    if node.op in skip:
        return Site(index, name, node.op, x, y, None, "in --skip", (index,))
    result = matcher(NodeContext(node, opset))
    if isinstance(result, NoMatch):
        return Site(index, name, node.op, x, y, None, result.reason, (index,))
    return Site(index, name, node.op, x, y, result, _dtype_reason(node.inputs[0]), (index,))


def find_sites(
    graph: gs.Graph, opset: int, only: set[str] | None = None, skip: set[str] | None = None
) -> tuple[list[Site], list[NearMiss]]:
    """Every activation in the graph's top level, in node order, and the near misses of composites."""
    skip = skip or set()
    sites, claimed, misses = [], set(), []
    if (only is None or COMPOSITE in only) and COMPOSITE not in skip:
        composites, misses = find_composites(graph, opset)
        tensors = graph.tensors()
        for c in composites:
            out = c.nodes[-1]
            node = graph.nodes[out]
            name = node.name or f"{node.op}_{out}"
            sites.append(Site(out, name, c.kind, c.x, c.y, c.activation, _dtype_reason(tensors.get(c.x)), c.nodes))
            claimed.update(c.nodes)
    for index, node in enumerate(graph.nodes):
        if index in claimed:
            continue
        site = _site(index, node, opset, only, skip)
        if site is not None:
            sites.append(site)
    sites.sort(key=lambda s: s.index)
    return sites, misses
