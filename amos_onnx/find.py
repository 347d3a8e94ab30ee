"""Find the activation sites of a graph and decide, per site, whether it converts (never mutates)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .gates import Activation, NodeContext, NoMatch, lookup

FLOAT_TYPES = (np.float32,)


@dataclass(frozen=True)
class Site:
    """One activation node: what it computes, or why it is not converted."""

    index: int  # position in graph.nodes
    name: str  # node name, or "<op>_<index>" when the node has none
    op: str
    input: str
    output: str
    activation: Activation | None
    reason: str | None = None  # None: the site converts

    @property
    def converts(self) -> bool:
        return self.reason is None


def _dtype_reason(node: gs.Node) -> str | None:
    dtype = node.inputs[0].dtype if node.inputs else None
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
        return Site(index, name, node.op, x, y, None, "not in --only")
    if node.op in skip:
        return Site(index, name, node.op, x, y, None, "in --skip")
    result = matcher(NodeContext(node, opset))
    if isinstance(result, NoMatch):
        return Site(index, name, node.op, x, y, None, result.reason)
    return Site(index, name, node.op, x, y, result, _dtype_reason(node))


def find_sites(graph: gs.Graph, opset: int, only: set[str] | None = None, skip: set[str] | None = None) -> list[Site]:
    """Every registered activation in the graph's top level, in node order."""
    sites = []
    for index, node in enumerate(graph.nodes):
        site = _site(index, node, opset, only, skip or set())
        if site is not None:
            sites.append(site)
    return sites
