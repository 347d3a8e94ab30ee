"""Replace each converted activation node by its gate, in place (the only stage that edits the graph).

The gate writes into the activation's own output tensor, so consumers and graph
outputs keep their names; every generated name starts with "<node>/amos" and is
made unique by one helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from amos_onnx.find.sites import Site
from amos_onnx.gate import GateParams
from amos_onnx.load import default_opset
from amos_onnx.options import EmitForm
from amos_onnx.rewrite import emit


@dataclass(frozen=True)
class RewriteResult:
    """What the rewrite did: the emission form, the function overloads added, the IR version change."""

    emit: EmitForm
    converted: int
    overloads: tuple[str, ...]
    ir_version: tuple[int, int]


class Names:
    """Unique, traceable names: "<node>/amos/<part>", suffixed when already taken."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        """Every name of the graph and its subgraphs: a subgraph sees its outer scopes' names."""
        for node in graph.node:
            self.taken.add(node.name)
            self.taken.update(node.input)
            self.taken.update(node.output)
            for sub in _subgraphs(node):
                self._collect(sub)
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


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in list(a.graphs) + ([a.g] if a.HasField("g") else [])]


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for sub in _subgraphs(node):
            used |= _used_names(sub)
    return used


def node_id(node: onnx.NodeProto) -> str:
    """A node's identity within its graph: its first output tensor's name (find.sites.node_id)."""
    return node.output[0] if node.output else ""


def _locate(model: onnx.ModelProto, path: tuple[tuple[str, str], ...]) -> onnx.GraphProto:
    """The (sub)graph at a site's path: the holding node (by node_id) and attribute name per level."""
    graph = model.graph
    for owner, attr in path:
        node = next(n for n in graph.node if node_id(n) == owner)
        graph = next(a.g for a in node.attribute if a.name == attr)
    return graph


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


def rewrite(model: onnx.ModelProto, sites: list[Site], params: dict[str, GateParams], form: EmitForm) -> RewriteResult:
    """Mutate `model`: each converting site's node (found by its output tensor) becomes its gate (function node
    or inline ops)."""
    emitter = Emitter(model, form)
    converting = [s for s in sites if s.converts]
    paths = list(dict.fromkeys(s.graph for s in converting))
    for path in sorted(paths, key=len, reverse=True):  # deepest subgraphs first
        group = [s for s in converting if s.graph == path]
        _rewrite_graph(_locate(model, path), group, params, emitter)
    before = model.ir_version
    _constant_initializers(model)
    emitter.add_functions(model)
    return RewriteResult(emitter.form, len(converting), tuple(sorted(o.name for o in emitter.overloads)),
                         (before, model.ir_version))


def _rewrite_graph(graph: onnx.GraphProto, sites: list[Site], params: dict[str, GateParams],
                   emitter: Emitter) -> None:
    """Replace the sites of one graph (not its subgraphs)."""
    by_output = {s.output: s for s in sites}
    # A composite's other nodes go; its gate takes the place of the node that wrote the output.
    removed = {n for s in sites for n in s.nodes if n != s.output}
    new_nodes: list[onnx.NodeProto] = []
    orphan_candidates: set[str] = set()
    for node in graph.node:
        if node_id(node) in removed:
            orphan_candidates.update(node.input)
            continue
        site = by_output.get(node_id(node))
        if site is None:
            new_nodes.append(node)
            continue
        orphan_candidates.update(node.input[1:])
        nodes, inits = emitter.gate_nodes(site, site.output, params[site.name])
        new_nodes.extend(nodes)
        graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(graph, orphan_candidates)


CONSTANT_INITIALIZERS_IR = 4  # from this IR version an initializer listed as a graph input is overridable


def _constant_initializers(model: onnx.ModelProto) -> None:
    """An old model (IR < 4) lists every initializer as a graph input, and they are constants there; the gates'
    new initializers would need listing too. Raised to IR 4, the initializers leave the inputs and stay what they
    were: constants that onnxruntime can fold, not inputs a caller may override."""
    if model.ir_version >= CONSTANT_INITIALIZERS_IR:
        return
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = CONSTANT_INITIALIZERS_IR


class Emitter:
    """Writes gates into one model: the emission form, the model's unique names, and the function overloads the
    gates written so far call."""

    def __init__(self, model: onnx.ModelProto, form: EmitForm) -> None:
        self.form = EmitForm(form)
        self.names = Names(model.graph)
        self.overloads: set[emit.Overload] = set()

    def gate_nodes(self, site: Site, output: str, gate: GateParams) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
        """The nodes computing `site`'s gate from its input into `output` (in the site's element type) and the
        initializers they need (none in the function form)."""
        names = self.names
        doc = f"AMOS spiking gate (K={gate.k}) replacing {site.op} node '{site.name}'"
        x, y = site.input, output
        nodes: list[onnx.NodeProto] = []
        inits: list[TensorProto] = []
        if site.dtype != TensorProto.FLOAT:  # the gate runs in float32, with casts at its edges
            x, y = names.make(f"{site.name}/amos/x32"), names.make(f"{site.name}/amos/y32")
            nodes.append(helper.make_node("Cast", [site.input], [x], to=TensorProto.FLOAT,
                                          name=names.make(f"{site.name}/amos/cast_in")))
        if self.form is EmitForm.FUNCTION:
            nodes.append(emit.gate_node(x, y, gate, site.rank, names.make(f"{site.name}/amos"), doc))
            self.overloads.add(emit.overload_of(gate, site.rank))
        else:
            inline, inits = emit.inline_nodes(x, y, gate, site.rank, names.scoped(site.name))
            nodes.extend(inline)
        if site.dtype != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [y], [output], to=site.dtype,
                                          name=names.make(f"{site.name}/amos/cast_out")))
        return nodes, inits

    def add_functions(self, model: onnx.ModelProto) -> None:
        """The model-local functions of the overloads used, when there are any (add_functions)."""
        if self.overloads:
            add_functions(model, self.overloads)


def add_functions(model: onnx.ModelProto, overloads: set[emit.Overload]) -> None:
    """The model-local functions of these overloads (in the order of their names), the gate's opset and IR 10."""
    present = {(f.domain, f.name, f.overload) for f in model.functions}
    opsets = [helper.make_opsetid("", default_opset(model))]
    for overload in sorted(overloads, key=lambda o: o.name):
        if (emit.DOMAIN, emit.OP_TYPE, overload.name) not in present:
            model.functions.append(emit.function_proto(overload, opsets))
    if not any(o.domain == emit.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(emit.DOMAIN, emit.DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, emit.FUNCTION_IR_VERSION)
