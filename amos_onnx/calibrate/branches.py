"""Sites inside If branches, brought out for calibration: a branch's tensors cannot be graph outputs, so each one
leaves through an extra output of every If on its way up (the other branch gives an empty tensor)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from amos_onnx.find.sites import Site


def if_path(graph: onnx.GraphProto, path: tuple[tuple[str, str], ...]) -> list[tuple[onnx.NodeProto, str]] | None:
    """The If nodes (and the branch taken) from the graph down to a site's subgraph; None when the way goes
    through a Loop or Scan body (whose tensors come out once per iteration)."""
    chain = []
    for holder, attr in path:
        node = next((n for n in graph.node if n.output and n.output[0] == holder), None)
        if node is None or node.op_type != "If":
            return None
        chain.append((node, attr))
        graph = next(a.g for a in node.attribute if a.name == attr)
    return chain


def expose_branches(model: onnx.ModelProto, sites: list[Site]) -> dict[str, str]:
    """In place: every converting site inside If branches gets its input out as a graph output (named
    amos/exposed/<i>), the If of each level taking an extra output (the branch holding the site an Identity of
    it, the other an empty tensor of its type). The graph outputs added, with the samples key (Site.samples) of
    the site each carries."""
    names: dict[str, str] = {}
    inner_sites = [s for s in sites if s.converts and s.graph]
    for i, site in enumerate(inner_sites):
        chain = if_path(model.graph, site.graph)
        if chain is None or site.samples in names.values():
            continue
        value = site.input
        empty = numpy_helper.from_array(np.zeros(0, helper.tensor_dtype_to_np_dtype(site.dtype)))
        for level, (node, attr) in reversed(list(enumerate(chain))):
            out = f"amos/exposed/{i}/{level}"
            for branch in (a for a in node.attribute if a.name in ("then_branch", "else_branch")):
                held = f"{out}/{branch.name}"
                if branch.name == attr:
                    branch.g.node.append(helper.make_node("Identity", [value], [held]))
                else:
                    branch.g.node.append(helper.make_node("Constant", [], [held], value=empty))
                branch.g.output.append(helper.make_tensor_value_info(held, site.dtype, None))
            node.output.append(out)
            value = out
        model.graph.output.append(helper.make_tensor_value_info(value, site.dtype, None))
        names[value] = site.samples
    return names
