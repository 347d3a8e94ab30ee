"""Sites inside If branches and Scan bodies, brought out for calibration: a subgraph's tensors cannot be graph
outputs, so each one leaves through an extra output of every If or Scan on its way up: the other branch of an If
gives an empty tensor, and a Scan stacks what its body gives at every step (a per-step scan output). Loop bodies
stay unsampled (a Loop's per-iteration outputs must keep one shape, which its carried tensors need not)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from amos_onnx.find.sites import Site

CARRIERS = ("If", "Scan")  # the nodes whose subgraphs' tensors calibration brings out


def if_path(graph: onnx.GraphProto, path: tuple[tuple[str, str], ...]) -> list[tuple[onnx.NodeProto, str]] | None:
    """The If and Scan nodes (and the branch or body) from the graph down to a site's subgraph; None when the way
    goes through a Loop body."""
    chain = []
    for holder, attr in path:
        node = next((n for n in graph.node if n.output and n.output[0] == holder), None)
        if node is None or node.op_type not in CARRIERS:
            return None
        chain.append((node, attr))
        graph = next(a.g for a in node.attribute if a.name == attr)
    return chain


def stacked_axes(graph: onnx.GraphProto, site: Site) -> int:
    """The axes the Scans on a site's way up stack its exposed samples along, ahead of its own (scans_in)."""
    return scans_in(if_path(graph, site.graph) or [])


def scans_in(chain: list[tuple[onnx.NodeProto, str]]) -> int:
    """The Scans of an if_path chain: each stacks what leaves its body along one more leading axis."""
    return sum(node.op_type == "Scan" for node, _ in chain)


def merged_steps(value: np.ndarray, stacked: int) -> np.ndarray:
    """A tensor brought out of a subgraph with `stacked` leading axes (the per-step outputs of the Scans around it)
    merged into the tensor's own first axis, so that its other axes (a channel axis) stay where they are inside."""
    return value.reshape((-1, *value.shape[stacked + 1:])) if stacked and value.ndim > stacked else value


def _stacked(node: onnx.NodeProto, value: str, out: str, dtype: int) -> None:
    """In place: `value` of a Scan's body leaves as the Scan's extra output `out`, stacked over the steps."""
    body = next(a.g for a in node.attribute if a.name == "body")
    held = f"{out}/body"
    body.node.append(helper.make_node("Identity", [value], [held]))
    body.output.append(helper.make_tensor_value_info(held, dtype, None))
    for attr in node.attribute:  # a scan output's direction and axis, when the node lists them: forward, axis 0
        if attr.name in ("scan_output_directions", "scan_output_axes"):
            attr.ints.append(0)
    node.output.append(out)


def expose_branches(model: onnx.ModelProto, sites: list[Site]) -> dict[str, str]:
    """In place: every converting site inside If branches and Scan bodies gets its input out as a graph output
    (named amos/exposed/<i>/<level>, expose_value). The graph outputs added, with the samples key (Site.samples) of
    the site each carries."""
    names: dict[str, str] = {}
    inner_sites = [s for s in sites if s.converts and s.graph]
    for i, site in enumerate(inner_sites):
        chain = if_path(model.graph, site.graph)
        if chain is None or site.samples in names.values():
            continue
        names[expose_value(model, chain, site.input, site.dtype, f"amos/exposed/{i}")] = site.samples
    return names


def expose_value(model: onnx.ModelProto, chain: list[tuple[onnx.NodeProto, str]], value: str, dtype: int,
                 prefix: str) -> str:
    """In place: the tensor `value` of the subgraph at the end of `chain` (if_path's) out as a graph output, named
    <prefix>/<level>: the If or Scan of each level takes an extra output (an If's branch holding the value an
    Identity of it, the other an empty tensor of its type; a Scan's body an Identity of it, stacked). The graph
    output's name."""
    empty = numpy_helper.from_array(np.zeros(0, helper.tensor_dtype_to_np_dtype(dtype)))
    for level, (node, attr) in reversed(list(enumerate(chain))):
        out = f"{prefix}/{level}"
        if node.op_type == "Scan":
            _stacked(node, value, out, dtype)
            value = out
            continue
        for branch in (a for a in node.attribute if a.name in ("then_branch", "else_branch")):
            held = f"{out}/{branch.name}"
            if branch.name == attr:
                branch.g.node.append(helper.make_node("Identity", [value], [held]))
            else:
                branch.g.node.append(helper.make_node("Constant", [], [held], value=empty))
            branch.g.output.append(helper.make_tensor_value_info(held, dtype, None))
        node.output.append(out)
        value = out
    model.graph.output.append(helper.make_tensor_value_info(value, dtype, None))
    return value
