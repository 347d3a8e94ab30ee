"""Where a gate's mean error can be taken back: the linear layers its output reaches, each with a bias.

A site's gate makes an error whose mean per channel shifts everything downstream. The first linear layer the
site's output reaches (through pooling, shape ops, concatenations, residual sums and products) adds a constant
per output channel, its bias: subtracting the measured mean shift of that layer's output there takes the shift
back (empirical bias correction, Nagel et al. 2019; SNN Calibration's light mode, Li et al. 2021). A bias is a
constant input current: the network stays spiking.

Each target gets a level, the deepest level of the sites upstream of its input (a site's level: one more than
that of the deepest site upstream of it), so a target is measured once every site it depends on is spiking and
every target before it is corrected (compensate.bias).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from amos_onnx.find.sites import Site
from amos_onnx.load import constant_tensors
from amos_onnx.rewrite.graph import node_id

# Ops a mean shift passes through on its way to the next linear layer (it is measured there, not modelled).
PASSED = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Identity",
          "Squeeze", "Unsqueeze", "Transpose", "Dropout", "Pad", "Concat", "Add", "Sub", "Mul", "Div", "Cast",
          "Resize", "Upsample", "Slice", "Split", "BatchNormalization"}
BIASED_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


@dataclass(frozen=True)
class Target:
    """A linear layer whose bias takes back the mean shift of its output: `node` (node_id) computes `output`,
    whose channels lie on `axis`; its bias is input `slot` of that node (`bias`: the initializer's name, "" when it
    has none yet), `channels` long, scaled by `scale` (Gemm's beta) in the output. `level`: the deepest site level
    upstream of its input."""

    node: str
    name: str
    output: str
    axis: int
    slot: int
    bias: str
    channels: int
    scale: float
    dtype: int
    level: int


def site_levels(model: onnx.ModelProto, sites: Iterable[Site]) -> tuple[dict[str, int], dict[str, int]]:
    """The level of every top-level tensor (0: no site upstream; a site's output: its input's level + 1) and of
    every converting top-level site, by name. Nodes are in topological order, as ONNX requires."""
    outputs = {s.output: s for s in sites if s.converts and not s.graph}
    level: dict[str, int] = {}
    by_site: dict[str, int] = {}
    for node in model.graph.node:
        here = max((level.get(i, 0) for i in node.input if i), default=0)
        for out in node.output:
            level[out] = here
        site = outputs.get(node_id(node))
        if site is not None:
            by_site[site.name] = level.get(site.input, 0) + 1
            level[site.output] = by_site[site.name]
    return level, by_site


def find_targets(model: onnx.ModelProto, sites: list[Site],
                 level: dict[str, int] | None = None) -> list[Target]:
    """The linear layers reached from the converting top-level sites' outputs (looking through PASSED ops, never
    through another site), each with a bias it can take: Conv (bias input 2), Gemm without transA (input 2, a
    vector or absent), MatMul by a constant 2-D matrix followed by Add of a constant vector on the last axis."""
    level = level if level is not None else site_levels(model, sites)[0]  # site_levels' tensor levels
    inits = constant_tensors(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    site_outputs = {s.output for s in sites if s.converts and not s.graph}
    found: dict[str, Target] = {}
    todo, seen = list(site_outputs), set(site_outputs)
    while todo:
        for node in consumers.get(todo.pop(), []):
            target = _target(node, consumers, inits, level)
            if target is not None:
                found.setdefault(target.node, target)
            elif node.op_type in PASSED and node_id(node) not in site_outputs:
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        todo.append(out)
    return sorted(found.values(), key=lambda t: (t.level, t.node))


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _bias(node: onnx.NodeProto, slot: int, inits: dict[str, onnx.TensorProto], channels: int) -> str | None:
    """The node's bias at `slot` ("" when absent), or None when it is not a vector of `channels` (or a scalar)
    held in an initializer or a Constant node."""
    if len(node.input) <= slot or not node.input[slot]:
        return ""
    tensor = inits.get(node.input[slot])
    if tensor is None or tensor.data_type not in BIASED_TYPES:
        return None
    shape = list(tensor.dims)
    return tensor.name if shape in ([channels], [1], []) else None


def _target(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], inits: dict[str, onnx.TensorProto],
            level: dict[str, int]) -> Target | None:
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.data_type not in BIASED_TYPES or node.input[0] in inits:
        return None
    depth = level.get(node.input[0], 0)
    if node.op_type == "Conv" and len(weight.dims) >= 3:
        channels = int(weight.dims[0])
        bias = _bias(node, 2, inits, channels)
        if bias is not None:
            return Target(node_id(node), node.name or node_id(node), node.output[0], 1, 2, bias, channels, 1.0,
                          weight.data_type, depth)
    if node.op_type == "Gemm" and len(weight.dims) == 2 and not _attr(node, "transA", 0):
        channels = int(weight.dims[0] if _attr(node, "transB", 0) else weight.dims[1])
        bias, beta = _bias(node, 2, inits, channels), float(_attr(node, "beta", 1.0))  # type: ignore[arg-type]
        if bias is not None and beta != 0.0:
            return Target(node_id(node), node.name or node_id(node), node.output[0], -1, 2, bias, channels, beta,
                          weight.data_type, depth)
    if node.op_type == "MatMul" and len(weight.dims) == 2:
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add" and len(after[0].input) == 2:
            add = after[0]
            slot = 1 if add.input[0] == node.output[0] else 0
            bias = _bias(add, slot, inits, int(weight.dims[1]))
            if bias:  # an Add of a constant vector on the last axis
                return Target(node_id(add), add.name or node_id(add), add.output[0], -1, slot, bias,
                              int(weight.dims[1]), 1.0, weight.data_type, depth)
    return None


def bias_values(constants: dict[str, onnx.TensorProto], target: Target) -> np.ndarray:
    """The target's bias now, as a float64 vector of its channels (zeros where it has none); `constants`: the
    model's constant_tensors."""
    if not target.bias:
        return np.zeros(target.channels)
    tensor = constants[target.bias]
    return np.broadcast_to(numpy_helper.to_array(tensor).astype(np.float64).ravel(), (target.channels,)).copy()
