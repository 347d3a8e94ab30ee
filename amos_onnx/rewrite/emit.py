"""The gate in standard ONNX ops: the converted node, its function body, its inline expansion.

One unrolled loop serves both emission forms; they differ only in where the
per-step parameters come from (attribute references inside a model-local
function, or initializers in the main graph), so their outputs are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from amos_onnx.gate import GateParams

DOMAIN = "amos"
OP_TYPE = "AmosGate"
DOMAIN_VERSION = 1
FUNCTION_IR_VERSION = 10  # function overloads need IR version 10
PARAM_ATTRS = ("thresholds", "resets", "weights")
# A gate of several chains keeps its parameters under other names (beside its `chains`): a one-chain function body
# refuses such a node (the attributes it reads are missing) rather than compute its first chain alone.
CHAIN_ATTRS = ("chain_thresholds", "chain_resets", "chain_weights")


def param_attrs(chains: int) -> tuple[str, str, str]:
    """The attribute names of a gate's thresholds, resets and weights."""
    return PARAM_ATTRS if chains == 1 else CHAIN_ATTRS

Namer = Callable[[str], str]


class Overload(NamedTuple):
    """One function body: K, for a per-channel gate the number of axes after its channel axis, and the chains of a
    shared gate."""

    k: int
    trailing: int | None = None
    chains: int = 1

    @property
    def name(self) -> str:
        name = f"k{self.k}" if self.trailing is None else f"k{self.k}c{self.trailing}"
        return name if self.chains == 1 else f"{name}x{self.chains}"


def overload_of(params: GateParams, rank: int | None) -> Overload:
    """Function overload for this gate: one per K (and trailing dims for per-channel gates, chains for a gate of
    several)."""
    if params.axis is None:
        return Overload(params.k, None, params.chains)
    if rank is None:
        raise ValueError("a per-channel gate needs the input rank")
    return Overload(params.k, rank - 1 - params.axis)


def unroll(x: str, y: str, steps: list[tuple[str, str, str]], zero: str, name: Namer) -> list[onnx.NodeProto]:
    """The K steps: z = v > T; y = where(z, y + d, y); v = where(z, v - h, v) (last reset skipped)."""
    nodes = []
    v, acc = x, ""
    k = len(steps)
    for t, (threshold, reset, weight) in enumerate(steps, start=1):
        z = name(f"z{t}")
        nodes.append(helper.make_node("Greater", [v, threshold], [z], name=name(f"fire{t}")))
        out = y if t == k else name(f"y{t}")
        if t == 1:
            nodes.append(helper.make_node("Where", [z, weight, zero], [out], name=name(f"out{t}")))
        else:
            added = name(f"y{t}_add")
            nodes.append(helper.make_node("Add", [acc, weight], [added], name=name(f"add{t}")))
            nodes.append(helper.make_node("Where", [z, added, acc], [out], name=name(f"out{t}")))
        acc = out
        if t < k:
            sub, nv = name(f"v{t}_sub"), name(f"v{t + 1}")
            nodes.append(helper.make_node("Sub", [v, reset], [sub], name=name(f"reset{t}")))
            nodes.append(helper.make_node("Where", [z, sub, v], [nv], name=name(f"membrane{t + 1}")))
            v = nv
    return nodes


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _attr_const(name: str, attr: str) -> onnx.NodeProto:
    ref = AttributeProto(name="value_floats", ref_attr_name=attr, type=AttributeProto.FLOATS)
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(ref)
    return node


def _must_match(given: str, own: str, tag: str) -> list[onnx.NodeProto]:
    """Nodes giving `{tag}_ok`, a float 0 that onnxruntime can only compute when the 1-element int64 tensors
    `given` and `own` are equal (a Reshape of one element to 1 + (given - own)^2 elements)."""
    return [helper.make_node("Sub", [given, own], [f"{tag}_off"]),
            helper.make_node("Mul", [f"{tag}_off", f"{tag}_off"], [f"{tag}_sq"]),
            helper.make_node("Add", [f"{tag}_sq", "one"], [f"{tag}_count"]),
            helper.make_node("Reshape", ["zero_1", f"{tag}_count"], [f"{tag}_checked"]),
            helper.make_node("Gather", [f"{tag}_checked", "i1"], [f"{tag}_ok"])]


def _attr_int(name: str, attr: str) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(AttributeProto(name="value_int", ref_attr_name=attr, type=AttributeProto.INT))
    return node


def _checks(k: int, trailing: int | None, chains: int = 1) -> list[onnx.NodeProto]:
    """The body's refusal of a node whose attributes do not fit this overload (the native op reads them and would
    compute another gate): k must be the overload's K, a per-channel gate's axis must leave the overload's
    number of axes after it, and a gate of several chains must say as many. Gives `zero`, the body's float 0,
    through them."""
    nodes = [_const("zero_0", np.array(0.0, np.float32)), _const("zero_1", np.zeros(1, np.float32)),
             _const("one", np.ones(1, np.int64)), _const("k_own", np.array([k], np.int64)),
             _attr_int("k_scalar", "k"), helper.make_node("Reshape", ["k_scalar", "one"], ["k_given"]),
             *_must_match("k_given", "k_own", "k"),
             helper.make_node("Add", ["zero_0", "k_ok"], ["zero" if trailing is None and chains == 1 else "zero_k"])]
    if chains > 1:
        nodes += [_const("chains_own", np.array([chains], np.int64)), _attr_int("chains_scalar", "chains"),
                  helper.make_node("Reshape", ["chains_scalar", "one"], ["chains_given"]),
                  *_must_match("chains_given", "chains_own", "chains"),
                  helper.make_node("Add", ["zero_k", "chains_ok"], ["zero"])]
    if trailing is not None:
        nodes += [_attr_int("axis_scalar", "axis"), helper.make_node("Reshape", ["axis_scalar", "one"], ["axis_given"]),
                  helper.make_node("Shape", ["x"], ["x_shape"]), helper.make_node("Shape", ["x_shape"], ["rank"]),
                  _const("after", np.array([1 + trailing], np.int64)),
                  helper.make_node("Sub", ["rank", "after"], ["axis_own"]),
                  *_must_match("axis_given", "axis_own", "axis"),
                  helper.make_node("Add", ["zero_k", "axis_ok"], ["zero"])]
    return nodes


def function_proto(overload: Overload, opset_imports: list[onnx.OperatorSetIdProto]) -> onnx.FunctionProto:
    """The model-local function for one overload: parameters come from the node's attributes; a node whose k
    (or axis) does not fit the overload is refused (_checks)."""
    k, trailing, chains = overload
    nodes = [_const("i1", np.array(0, np.int64)), *_checks(k, trailing, chains)]
    steps = []
    for attr, named in zip(PARAM_ATTRS, param_attrs(chains)):
        nodes.append(_attr_const(f"{attr}_all", named))
        if trailing is not None:
            nodes.append(_const(f"{attr}_shape", np.array([-1, k], np.int64)))
            nodes.append(helper.make_node("Reshape", [f"{attr}_all", f"{attr}_shape"], [f"{attr}_ck"]))
    for t in range(k * chains):
        if t > 0:
            nodes.append(_const(f"i{t + 1}", np.array(t, np.int64)))
        names = []
        for attr in PARAM_ATTRS:
            step = f"{attr}{t + 1}"
            if trailing is None:
                nodes.append(helper.make_node("Gather", [f"{attr}_all", f"i{t + 1}"], [step]))
            else:
                nodes.append(helper.make_node("Gather", [f"{attr}_ck", f"i{t + 1}"], [f"{step}_c"], axis=1))
                if t == 0 and attr == PARAM_ATTRS[0]:
                    nodes.append(_const("channel_shape", np.array([-1] + [1] * trailing, np.int64)))
                nodes.append(helper.make_node("Reshape", [f"{step}_c", "channel_shape"], [step]))
            names.append(step)
        steps.append((names[0], names[1], names[2]))
    nodes += chained("x", "y", steps, chains, "zero", lambda s: s)
    attributes = ["k", *param_attrs(chains)] + (["axis"] if trailing is not None else []) + (
        ["chains"] if chains > 1 else [])
    return helper.make_function(
        DOMAIN, OP_TYPE, ["x"], ["y"], nodes, opset_imports, attributes=attributes, overload=overload.name,
        doc_string=f"AMOS spiking gate, K={k}" + (" per channel" if trailing is not None else "")
        + (f", {chains} chains" if chains > 1 else ""),
    )


def _prefixed(name: Namer, prefix: str) -> Namer:
    return lambda s: name(prefix + s)


def chained(x: str, y: str, steps: list[tuple[str, str, str]], chains: int, zero: str,
            name: Namer) -> list[onnx.NodeProto]:
    """unroll() for each chain's K steps (of `steps`, chain after chain), each from x, their outputs added in chain
    order into y; one chain is unroll() itself."""
    if chains == 1:
        return unroll(x, y, steps, zero, name)
    k = len(steps) // chains
    nodes: list[onnx.NodeProto] = []
    total = ""
    for c in range(chains):
        out = name(f"chain{c + 1}")  # each name made once: an inline form's namer makes every call unique
        nodes += unroll(x, out, steps[c * k:(c + 1) * k], zero, _prefixed(name, f"c{c + 1}_"))
        if c == 0:
            total = out
            continue
        added = y if c == chains - 1 else name(f"sum{c + 1}")
        nodes.append(helper.make_node("Add", [total, out], [added], name=name(f"chains{c + 1}")))
        total = added
    return nodes


def gate_node(x: str, y: str, params: GateParams, rank: int | None, node_name: str, doc: str) -> onnx.NodeProto:
    """The converted node: one AmosGate with K and T, h, d as attributes."""
    attrs: dict[str, Any] = {"k": params.k}
    for attr, named in zip(PARAM_ATTRS, param_attrs(params.chains)):
        attrs[named] = getattr(params, attr).ravel().tolist()
    if params.axis is not None:
        attrs["axis"] = params.axis
    if params.chains > 1:
        attrs["chains"] = params.chains
    node = helper.make_node(OP_TYPE, [x], [y], name=node_name, domain=DOMAIN, doc_string=doc, **attrs)
    node.overload = overload_of(params, rank).name
    return node


def inline_nodes(x: str, y: str, params: GateParams, rank: int | None,
                 name: Namer) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The gate expanded into standard ops, with its per-step parameters as initializers."""
    if params.axis is not None and rank is None:
        raise ValueError("a per-channel gate needs the input rank")
    zero = name("zero")
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), zero)]
    steps = []
    for c in range(params.chains):
        chain = params.chain(c) if params.chains > 1 else params
        tag = f"c{c + 1}_" if params.chains > 1 else ""
        for t in range(params.k):
            values = chain.step(t, rank or 0)
            names = (name(f"{tag}T{t + 1}"), name(f"{tag}h{t + 1}") if t < params.k - 1 else "",
                     name(f"{tag}d{t + 1}"))
            inits += [numpy_helper.from_array(np.asarray(v, np.float32), n) for v, n in zip(values, names) if n]
            steps.append(names)
    return chained(x, y, steps, params.chains, zero, name), inits
