"""Composite activations: chains of elementwise ops that compute one scalar function of one tensor.

Exporters write SiLU as x*Sigmoid(x), GELU as Div/Erf/Add/Mul/Mul, Mish as
x*Tanh(Softplus(x)), HardSwish as x*Clip(x+3,0,6)/6, Softplus as Log(1+Exp(x)),
LeakyRelu as Max(x, a*x). One mechanism finds them all: walking back from a
node's output through elementwise ops with scalar constants, stop at the nearest
single tensor x that every path passes through. If the region in between is
nonlinear and nothing outside uses its intermediate tensors, it computes y = g(x)
elementwise and becomes one gate; g is evaluated by running the region itself.
A lookalike such as x*Sigmoid(s) (squeeze-excitation) depends on two tensors and
is reported, not matched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from amos_onnx.find.gates import DEFAULT_RANGE, Activation, named_functions, registered_ops

UNARY = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Sigmoid", "HardSigmoid", "Tanh",
    "HardSwish", "Gelu", "Mish", "ThresholdedRelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
    "Identity",
}
CONSTANT_OPERANDS = {"Clip", "PRelu"}  # elementwise when every input but the first is a scalar constant
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# A region is an activation when it holds one of these (or computes a known activation, e.g. Softplus as
# Log(1+Exp(x))); Sqrt(var+eps) of a layer norm, say, is arithmetic and stays as it is.
ACTIVATION_OPS = (UNARY - {"Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity"}
                  | {"Clip", "PRelu", "Max", "Min"})
COMPOSITE_K = 16
COMPOSITE = "Composite"  # the name --only/--skip use for composite activations


@dataclass(frozen=True)
class Composite:
    """A matched region: node indices (topological), its input x and output y, and g."""

    nodes: tuple[int, ...]
    x: str
    y: str
    activation: Activation
    kind: str  # e.g. "SiLU[Sigmoid·Mul]": the function's name and the ops that wrote it


@dataclass(frozen=True)
class NearMiss:
    """A region that looked like a composite activation, and why it is not one."""

    node: str
    reason: str


def _scalar_constant(tensor: gs.Tensor) -> np.ndarray | None:
    values: np.ndarray | None
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values)
    elif len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        values = np.asarray(value.values) if isinstance(value, gs.Constant) else None
    else:
        return None
    if values is None or values.size != 1 or values.dtype.kind != "f":
        return None
    return values


def _flow_inputs(node: gs.Node) -> list[gs.Tensor] | None:
    """The non-constant inputs of an elementwise-with-scalar-constants node, or None if it is not one."""
    if (node.domain or "") not in ("", "ai.onnx") or not node.inputs or len(node.outputs) != 1:
        return None
    if node.op in UNARY:
        return [node.inputs[0]] if len(node.inputs) == 1 else None
    if node.op in CONSTANT_OPERANDS:
        rest = [t for t in node.inputs[1:] if t.name]
        return [node.inputs[0]] if all(_scalar_constant(t) is not None for t in rest) else None
    if node.op in BINARY and len(node.inputs) == 2:
        return [t for t in node.inputs if _scalar_constant(t) is None]
    return None


class _Walker:
    """Index of a graph's nodes and tensors for region walks."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.outputs = {t.name for t in graph.outputs}
        self.activations = set(registered_ops())

    def producer(self, tensor: gs.Tensor) -> int:
        return self.index.get(id(tensor.inputs[0]), -1) if tensor.inputs else -1

    def _absorbable(self, x: gs.Tensor, region: set[int]) -> bool:
        """Whether the region may grow through x's producer: elementwise, not an activation of its own,
        and x used by nothing else."""
        producer = self.producer(x)
        if producer < 0 or x.name in self.outputs:
            return False
        upstream = self.graph.nodes[producer]
        if _flow_inputs(upstream) is None or upstream.op in self.activations:
            return False
        return all(self.index.get(id(n)) in region for n in x.outputs)

    def region(self, out: int) -> tuple[list[int], gs.Tensor] | str | None:
        """The nodes between the nearest single dominating tensor x and node `out`: (nodes, x), or the
        reason a nonlinear region depends on more than one tensor, or None (nothing that looks close)."""
        nodes = self.graph.nodes
        first = _flow_inputs(nodes[out])
        if not first:
            return None
        region, frontier = {out}, {t.name: t for t in first}
        best: tuple[list[int], gs.Tensor] | None = None
        while True:
            if len(frontier) == 1:
                (x,) = frontier.values()
                if self._nonlinear_ops(region):
                    best = (sorted(region), x)
                if not self._absorbable(x, region):
                    return best
            name = max(frontier, key=lambda n: self.producer(frontier[n]))
            producer = self.producer(frontier[name])
            inputs = _flow_inputs(nodes[producer]) if producer >= 0 else None
            if not inputs:
                if best is not None:
                    return best
                if not self._nonlinear_ops(region):
                    return None
                return f"depends on {len(frontier)} tensors ({', '.join(sorted(frontier))}), not one"
            del frontier[name]
            region.add(producer)
            frontier.update({t.name: t for t in inputs})

    def _nonlinear_ops(self, region: set[int]) -> bool:
        return any(self.graph.nodes[i].op not in ("Add", "Sub", "Mul", "Div", "Neg", "Identity") for i in region)

    def leaks(self, region: list[int], y: gs.Tensor) -> str | None:
        """Why an intermediate tensor of the region cannot disappear, or None."""
        inside = {id(self.graph.nodes[i]) for i in region}
        for i in region:
            for tensor in self.graph.nodes[i].outputs:
                if tensor is y:
                    continue
                if tensor.name in self.outputs:
                    return f"intermediate tensor '{tensor.name}' is a graph output"
                users = list(dict.fromkeys(n.name or n.op for n in tensor.outputs if id(n) not in inside))
                if users:
                    return f"intermediate tensor '{tensor.name}' is also used by {', '.join(users)}"
        return None


def elem_type(tensor: gs.Tensor | None) -> int | None:
    """The ONNX element type of a graphsurgeon tensor, None when unknown."""
    dtype = tensor.dtype if tensor is not None else None
    if dtype is None:
        return None
    if isinstance(dtype, int):  # graphsurgeon keeps types numpy lacks (bfloat16) as ONNX enums
        return dtype
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _attr_value(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def region_model(graph: gs.Graph, region: list[int], x: gs.Tensor, y: gs.Tensor, opset: int,
                 dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """The region alone as a model from a 1-D x to y (element type `dtype`), with its scalar constants."""
    names = {x.name: "x", y.name: "y"}
    nodes, inits = [], []

    def name_of(tensor: gs.Tensor) -> str:
        if tensor.name in names:
            return names[tensor.name]
        new = f"t{len(names)}"
        names[tensor.name] = new
        constant = _scalar_constant(tensor)
        if constant is not None:
            inits.append(numpy_helper.from_array(np.asarray(constant).reshape(()), new))
        return new

    for i in region:
        node = graph.nodes[i]
        inputs = [name_of(t) if t.name else "" for t in node.inputs]
        outputs = [name_of(t) for t in node.outputs]
        attrs: dict[str, Any] = {k: _attr_value(v) for k, v in node.attrs.items()}
        nodes.append(helper.make_node(node.op, inputs, outputs, **attrs))
    sub = helper.make_graph(nodes, "region", [helper.make_tensor_value_info("x", dtype, ["N"])],
                            [helper.make_tensor_value_info("y", dtype, ["N"])], inits)
    return helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])


def evaluator(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """g(x) in float64 for any array shape, computed by onnxruntime in float32 as the original graph does."""
    from amos_onnx.runtime import session

    # One thread: the graph is a few elementwise ops, and a session without a thread pool keeps working in
    # the forked processes that fit sites in parallel (fit.py).
    sess = session(model, native=False, threads=1)
    np_type = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)

    def g(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        flat = x.astype(np.float32).astype(np_type).ravel()
        return sess.run(["y"], {"x": flat})[0].astype(np.float64).reshape(x.shape)

    return g


KNOWN = named_functions()  # the names a composite region is recognised by (gates.named)
_PROBE = np.linspace(-10, 10, 2001)


def describe(g: Callable[[np.ndarray], np.ndarray], ops: list[str]) -> tuple[str, str, bool]:
    """Name, label and ReLU-likeness of g: a known name when g matches one to float32 precision (the label is
    then that name, so equal functions share fits), else "Composite" with a label made of its ops and values."""
    values = g(_PROBE)
    scale = max(1.0, float(np.max(np.abs(values))))
    name = next((n for n, f in KNOWN.items() if np.max(np.abs(f(_PROBE) - values)) <= 1e-5 * scale), None)
    digest = hashlib.sha1(np.round(values, 5).tobytes()).hexdigest()[:8]
    label = name or f"Composite[{'·'.join(ops)}]#{digest}"
    kinks = np.sum(np.abs(np.diff(values, 2)) > 1e-5 * scale)
    relu_like = bool(np.all(values[_PROBE <= 0] == 0) and kinks <= 4)
    return name or "Composite", label, relu_like


def find_composites(graph: gs.Graph, opset: int) -> tuple[list[Composite], list[NearMiss]]:
    """Every composite activation region of the graph's top level, latest first, without overlaps."""
    walker = _Walker(graph)
    claimed: set[int] = set()
    found, misses = [], []
    for out in range(len(graph.nodes) - 1, -1, -1):
        if out in claimed:
            continue
        result = walker.region(out)
        node = graph.nodes[out]
        if isinstance(result, str):
            misses.append(NearMiss(node.name or f"{node.op}_{out}", f"{node.op} {result}"))
            continue
        if result is None or len(result[0]) < 2 or claimed.intersection(result[0]):
            continue
        region, x = result
        y = node.outputs[0]
        leak = walker.leaks(region, y)
        if leak is not None:
            misses.append(NearMiss(node.name or f"{node.op}_{out}", leak))
            continue
        dtype = elem_type(x) or TensorProto.FLOAT
        if dtype not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            misses.append(NearMiss(node.name or f"{node.op}_{out}", f"composite on {TensorProto.DataType.Name(dtype)}"
                                   " inputs is not supported (float, float16 and double are)"))
            continue
        g = evaluator(region_model(graph, region, x, y, opset, dtype))
        ops = [graph.nodes[i].op for i in region]
        name, label, relu_like = describe(g, ops)
        if name == COMPOSITE and not ACTIVATION_OPS.intersection(ops):
            misses.append(NearMiss(node.name or f"{node.op}_{out}", f"{'·'.join(ops)} is arithmetic on one tensor "
                                   "(no activation op, not a known activation): left as it is"))
            continue
        act = Activation(label, g, COMPOSITE_K, DEFAULT_RANGE[0], DEFAULT_RANGE[1], relu_like=relu_like)
        found.append(Composite(tuple(region), x.name, y.name, act, f"{name}[{'·'.join(ops)}]"))
        claimed.update(region)
    return found, misses
