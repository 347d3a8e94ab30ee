"""Replace each converted activation node by its gate, in place (the only stage that edits the graph).

The gate writes into the activation's own output tensor, so consumers and graph
outputs keep their names; every generated name starts with "<node>/amos" and is
made unique by one helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from . import emit
from .find import Site
from .load import default_opset
from .neuron import GateParams

EMIT_FORMS = ("function", "inline")


@dataclass(frozen=True)
class RewriteResult:
    """What the rewrite did: the emission form, the function overloads added, the IR version change."""

    emit: str
    converted: int
    overloads: tuple[str, ...]
    ir_version: tuple[int, int]


class Names:
    """Unique, traceable names: "<node>/amos/<part>", suffixed when already taken."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = set()
        for node in graph.node:
            self.taken.add(node.name)
            self.taken.update(node.input)
            self.taken.update(node.output)
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(v.name for v in graph.input)

    def make(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def scoped(self, site: str):  # type: ignore[no-untyped-def]
        return lambda part: self.make(f"{site}/amos/{part}")


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                used |= _used_names(sub)
    return used


def _prune(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Drop initializers and Constant nodes that only the replaced nodes used."""
    used = _used_names(graph)
    orphans = candidates - used
    if not orphans:
        return
    keep = [t for t in graph.initializer if t.name not in orphans]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and set(n.output) <= orphans)]
    del graph.node[:]
    graph.node.extend(nodes)


def rewrite(
    model: onnx.ModelProto, sites: list[Site], params: dict[str, GateParams], ranks: dict[str, int | None], form: str
) -> RewriteResult:
    """Mutate `model`: each converting site's node becomes its gate (function node or inline ops)."""
    if form not in EMIT_FORMS:
        raise ValueError(f"unknown emission form {form!r}")
    graph = model.graph
    names = Names(graph)
    by_index = {s.index: s for s in sites if s.converts}
    # A composite's other nodes go; its gate takes the place of the node that wrote the output.
    removed = {i for s in by_index.values() for i in s.nodes if i != s.index}
    new_nodes: list[onnx.NodeProto] = []
    orphan_candidates: set[str] = set()
    overloads: set[str] = set()
    for index, node in enumerate(graph.node):
        if index in removed:
            orphan_candidates.update(node.input)
            continue
        site = by_index.get(index)
        if site is None:
            new_nodes.append(node)
            continue
        orphan_candidates.update(node.input[1:])
        gate, rank = params[site.name], ranks.get(site.name)
        doc = f"AMOS spiking gate (K={gate.k}) replacing {site.op} node '{site.name}'"
        x, y = site.input, site.output
        if site.dtype != TensorProto.FLOAT:  # the gate runs in float32, with casts at its edges
            x, y = names.make(f"{site.name}/amos/x32"), names.make(f"{site.name}/amos/y32")
            new_nodes.append(helper.make_node("Cast", [site.input], [x], to=TensorProto.FLOAT,
                                              name=names.make(f"{site.name}/amos/cast_in")))
        if form == "function":
            new_nodes.append(emit.gate_node(x, y, gate, rank, names.make(f"{site.name}/amos"), doc))
            overloads.add(emit.overload_name(gate, rank))
        else:
            nodes, inits = emit.inline_nodes(x, y, gate, rank, names.scoped(site.name))
            new_nodes.extend(nodes)
            graph.initializer.extend(inits)
        if site.dtype != TensorProto.FLOAT:
            new_nodes.append(helper.make_node("Cast", [y], [site.output], to=site.dtype,
                                              name=names.make(f"{site.name}/amos/cast_out")))
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(graph, orphan_candidates)
    before = model.ir_version
    if overloads:
        _add_functions(model, sorted(overloads))
    return RewriteResult(form, len(by_index), tuple(sorted(overloads)), (before, model.ir_version))


def _add_functions(model: onnx.ModelProto, overloads: list[str]) -> None:
    present = {(f.domain, f.name, f.overload) for f in model.functions}
    opsets = [helper.make_opsetid("", default_opset(model))]
    for overload in overloads:
        if (emit.DOMAIN, emit.OP_TYPE, overload) not in present:
            model.functions.append(emit.function_proto(overload, opsets))
    if not any(o.domain == emit.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(emit.DOMAIN, emit.DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, emit.FUNCTION_IR_VERSION)
