"""The per-op registry: which ONNX activations become gates, and as what function.

A gate module registers a matcher for (domain, op_type, since_version). The
matcher looks at one node and returns the `Activation` it computes (reference
function, data-free range, default K) or a `NoMatch` with the reason, which
reaches the conversion report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

Func = Callable[[np.ndarray], np.ndarray]

DEFAULT_RANGE = (-10.0, 10.0)


@dataclass(frozen=True)
class Activation:
    """What one activation site computes, as a scalar function of its input."""

    label: str  # e.g. "LeakyRelu(alpha=0.1)"; equal labels mean equal functions
    func: Func
    k: int  # default K for this function
    lo: float = DEFAULT_RANGE[0]  # data-free fitting range
    hi: float = DEFAULT_RANGE[1]
    relu_like: bool = False  # zero for x <= 0 and piecewise linear above: binary start
    channel_funcs: tuple[Func, ...] | None = field(default=None, compare=False)
    axis: int | None = None  # channel axis of the input when channel_funcs is set


@dataclass(frozen=True)
class NoMatch:
    """Why a node that looked like an activation is not converted."""

    reason: str


@dataclass(frozen=True)
class NodeContext:
    """One node with what a matcher needs to know about its graph."""

    node: gs.Node
    opset: int

    def attr(self, name: str, default: object) -> object:
        return self.node.attrs.get(name, default)

    def input_rank(self) -> int | None:
        shape = self.node.inputs[0].shape if self.node.inputs else None
        return len(shape) if shape is not None else None

    def constant(self, index: int) -> np.ndarray | None:
        """The value of input `index` when it is an initializer or a Constant node's output."""
        if index >= len(self.node.inputs):
            return None
        tensor = self.node.inputs[index]
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
            value = tensor.inputs[0].attrs.get("value")
            if isinstance(value, gs.Constant):
                return np.asarray(value.values)
        return None

    def has_input(self, index: int) -> bool:
        return index < len(self.node.inputs) and self.node.inputs[index].name != ""


Matcher = Callable[[NodeContext], "Activation | NoMatch"]

_REGISTRY: dict[tuple[str, str], list[tuple[int, Matcher]]] = {}
_FUNCTIONS: dict[str, Func] = {}


def register(op_type: str, since_version: int, domain: str = "") -> Callable[[Matcher], Matcher]:
    """Register a matcher for op_type from opset since_version on (until a newer entry); registering the same
    (domain, op_type, since_version) twice is an error."""

    def wrap(matcher: Matcher) -> Matcher:
        entries = _REGISTRY.setdefault((domain, op_type), [])
        if any(since == since_version for since, _ in entries):
            raise ValueError(f"{domain or 'ai.onnx'} {op_type} since opset {since_version} is registered twice")
        entries.append((since_version, matcher))
        entries.sort(key=lambda e: e[0])
        return matcher

    return wrap


def lookup(domain: str, op_type: str, opset: int) -> Matcher | None:
    """The matcher for op_type at this opset, or None when the op is not an activation."""
    entries = _REGISTRY.get(("" if domain == "ai.onnx" else domain, op_type), [])
    chosen = None
    for since, matcher in entries:
        if since <= opset:
            chosen = matcher
    return chosen


def named(name: str) -> Callable[[Func], Func]:
    """Register a reference function by the name exporters' compositions of it are known by (SiLU, GELU, ...):
    the composite finder names a region that computes it so, and `amos-onnx fit` knows it. Twice is an error."""

    def wrap(func: Func) -> Func:
        if name in _FUNCTIONS:
            raise ValueError(f"function {name} is registered twice")
        _FUNCTIONS[name] = func
        return func

    return wrap


def named_functions() -> dict[str, Func]:
    """Every named reference function, in registration order."""
    return dict(_FUNCTIONS)


def registered_ops() -> list[str]:
    """Names of every op type with a registered gate."""
    return sorted({op for _, op in _REGISTRY})


def selectable_ops() -> list[str]:
    """What --only and --skip accept: the registered op types and "Composite"."""
    return registered_ops() + ["Composite"]


def fmt(value: float) -> str:
    """A float as it appears in labels: short and exact enough to tell functions apart."""
    return f"{float(value):.6g}"


def _load() -> None:
    from amos_onnx.find.gates import exponential, gelu, relu, sigmoid  # noqa: F401  (modules register on import)


_load()
