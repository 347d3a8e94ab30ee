"""Each site's gate alone in place, for many sites in one run: the model once as it is, and beside it, for each site,
a copy of the nodes downstream of the site reading its gate's output instead of its activation's (fit.focus's
measures of one gate at a time).

The switched model (focus.switched_model) computes the whole network once per site, each activation in an If
beside its gate; here everything upstream of a site is computed once for all of them, and onnxruntime keeps its
fusions outside the Ifs. On the Fashion VGG's seven sites, one run took half the time of the switched model's
eight, with the same outputs to the bit. The outputs of every copy come back from one run, so the sites go in
groups whose outputs fit FANNED_BYTES; a model whose outputs' size is not known from its shapes, or whose nodes
downstream of a site hold subgraphs, is left to the switched model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx
from onnx import helper

from amos_onnx.find.sites import Site
from amos_onnx.gate import GateParams
from amos_onnx.load import with_shapes
from amos_onnx.options import EmitForm
from amos_onnx.rewrite.graph import Emitter
from amos_onnx.rewrite.segments import outer_names

FANNED_BYTES = 128 << 20  # the outputs of one fanned run over the measured samples: the model's and its copies'


def sample_bytes(model: onnx.ModelProto, judged: Sequence[tuple[str, int]]) -> int | None:
    """Bytes of the judged tensors per sample (their shapes' first axis the samples), or None where a shape is
    not known beyond that axis."""
    typed = with_shapes(model).graph
    infos = {v.name: v.type.tensor_type for v in [*typed.value_info, *typed.output]}
    total = 0
    for name, dtype in judged:
        tensor = infos.get(name)
        if tensor is None or not tensor.HasField("shape"):
            return None
        dims = tensor.shape.dim[1:]
        if not all(d.HasField("dim_value") for d in dims):
            return None
        total += math.prod(d.dim_value for d in dims) * helper.tensor_dtype_to_np_dtype(dtype).itemsize
    return total


def group_size(model: onnx.ModelProto, judged: Sequence[tuple[str, int]], samples: int) -> int:
    """How many sites one fanned model may hold for runs over `samples` samples (0: its outputs' size is not
    known, there are none, or not even two fit)."""
    per_sample = sample_bytes(model, judged)
    if not per_sample:  # not known, or nothing to measure (the switched model says so)
        return 0
    fit = FANNED_BYTES // max(per_sample * max(samples, 1), 1) - 1  # the model's own outputs come back too
    return int(fit) if fit >= 2 else 0


def fanned_model(model: onnx.ModelProto, sites: list[Site], params: dict[str, GateParams], form: EmitForm,
                 judged: Sequence[tuple[str, int]]) -> tuple[onnx.ModelProto, dict[str, list[str]]] | None:
    """A copy of `model` whose outputs are the judged tensors (its own), and for each site the same tensors as
    computed with that site's gate (`params`, by site name) alone in place (by site name, in the order of
    `judged`); None when a node downstream of a site holds a subgraph."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph, emitter = copy.graph, Emitter(copy, form)
    del graph.output[:]
    graph.output.extend(_output(model, name, name, dtype) for name, dtype in judged)
    order = list(model.graph.node)
    fanned: dict[str, list[str]] = {}
    for site in sites:
        make = emitter.names.make
        tag = make(f"{site.name}/amos/alone")
        renamed = {site.output: make(f"{site.output}@{tag}")}
        nodes, inits = emitter.gate_nodes(site, renamed[site.output], params[site.name])
        graph.initializer.extend(inits)
        for node in order:
            if not any(name in renamed for name in outer_names(node)):
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                return None
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name = make(f"{node.name}@{tag}")
            del twin.input[:]
            twin.input.extend(renamed.get(name, name) for name in node.input)
            for i, name in enumerate(node.output):
                if name:
                    renamed[name] = twin.output[i] = make(f"{name}@{tag}")
            nodes.append(twin)
        graph.node.extend(nodes)
        fanned[site.name] = [renamed.get(name, name) for name, _ in judged]
        graph.output.extend(_output(model, name, renamed[name], dtype) for name, dtype in judged if name in renamed)
    emitter.add_functions(copy)
    return copy, fanned


def _output(model: onnx.ModelProto, name: str, output: str, dtype: int) -> onnx.ValueInfoProto:
    """A graph output `output` typed as the model's output `name` (its element type only for another tensor)."""
    info = next((o for o in model.graph.output if o.name == name), None)
    if info is None:
        return helper.make_tensor_value_info(output, dtype, None)
    typed = onnx.ValueInfoProto()
    typed.CopyFrom(info)
    typed.name = output
    return typed
