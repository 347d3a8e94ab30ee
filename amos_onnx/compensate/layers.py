"""The linear layers a weight reconstruction refits (compensate.reconstruct): their weights as a matrix per group,
and the rows of inputs they multiply at chosen output positions.

A Conv (2-D, explicit or no padding, any groups, strides and dilations) computes, at each output position and in
each group, the dot product of its weight rows with one patch of its input; a Gemm (without transA, alpha 1) does
the same with one row of its input, and a MatMul by a constant matrix followed by the Add of a bias with each
vector along its input's last axis (a token). So all are "rows times a matrix plus a bias", and refitting them is
a least squares problem over the rows their inputs give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from amos_onnx.compensate.targets import Target, bias_values, constant_tensors
from amos_onnx.rewrite.graph import node_id


@dataclass(frozen=True)
class Layer:
    """A target's layer: its input, the node holding its weight (node_id; the target's node but for MatMul + Add),
    the weight (float64, as stored) and bias (float64, per channel, zeros where it has none), and for a Conv its
    groups, kernel, strides, dilations and pads (top, left, bottom, right)."""

    target: Target
    input: str
    weight_node: str
    weight_name: str
    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    transposed: bool = False  # B stored as (inputs, outputs): a Gemm's with transB 0, a MatMul's

    @property
    def conv(self) -> bool:
        return self.weight.ndim == 4

    def matrices(self) -> np.ndarray:
        """The weights as (groups, outputs per group, inputs per group); a Conv's inputs kernel tap by tap, each
        tap's channels together (the order patches() gives its rows in)."""
        if self.conv:
            g, outs, taps = self.groups, self.weight.shape[0] // self.groups, self.kernel[0] * self.kernel[1]
            return self.weight.reshape(g, outs, -1, taps).transpose(0, 1, 3, 2).reshape(g, outs, -1)
        return (self.weight.T if self.transposed else self.weight)[None]

    def with_matrices(self, matrices: np.ndarray) -> np.ndarray:
        """Weights of the stored shape from (groups, outputs per group, inputs per group), as matrices() gives."""
        if self.conv:
            g, outs, taps = self.groups, self.weight.shape[0] // self.groups, self.kernel[0] * self.kernel[1]
            return matrices.reshape(g, outs, taps, -1).transpose(0, 1, 3, 2).reshape(self.weight.shape)
        return matrices[0].T if self.transposed else matrices[0]


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def layers(model: onnx.ModelProto, targets: list[Target]) -> list[Layer]:
    """The targets' layers that can be refitted (layer), in the targets' order."""
    constants = constant_tensors(model)
    nodes = {node_id(n): n for n in model.graph.node}
    made = {out: n for n in model.graph.node for out in n.output}
    return [found for t in targets if (found := layer(t, constants, nodes, made)) is not None]


def layer(target: Target, constants: dict[str, onnx.TensorProto], nodes: dict[str, onnx.NodeProto],
          made: dict[str, onnx.NodeProto]) -> Layer | None:
    """The target's layer when it can be refitted (a 2-D Conv without auto padding, a Gemm with alpha 1, or a
    MatMul + Add, with its weight in an initializer or a Constant node); None otherwise. `constants`: the model's
    constant_tensors, `nodes`: its nodes by node_id, `made`: by the tensors they make."""
    node = nodes.get(target.node)
    if node is not None and node.op_type == "Add":  # MatMul + Add: the weight is the MatMul's
        node = made.get(node.input[1 - target.slot])
        if node is None or node.op_type != "MatMul":
            return None
    if node is None or node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in constants:
        return None
    weight = numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
    bias = bias_values(constants, target)
    if node.op_type in ("Gemm", "MatMul"):
        if _attr(node, "alpha", 1.0) != 1.0 or weight.ndim != 2:
            return None
        return Layer(target, node.input[0], node_id(node), node.input[1], weight, bias * target.scale,
                     transposed=not _attr(node, "transB", 0))  # a MatMul has no transB: (inputs, outputs)
    if weight.ndim != 4 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    top, left, bottom, right = _ints(node, "pads", (0, 0, 0, 0))
    (sh, sw), (dh, dw) = _ints(node, "strides", (1, 1)), _ints(node, "dilations", (1, 1))
    return Layer(target, node.input[0], node_id(node), node.input[1], weight, bias, _ints(node, "group", (1,))[0],
                 (int(weight.shape[2]), int(weight.shape[3])), (sh, sw), (dh, dw), (top, left, bottom, right))


def _ints(node: onnx.NodeProto, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = _attr(node, name, default)
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)  # type: ignore[call-overload]


def positions(layer_: Layer, shape: tuple[int, ...]) -> int:
    """Output positions per sample of the layer on an input of `shape` (batch first): a Conv's pixels, a MatMul's
    tokens (every axis between the first and the last), one for a Gemm."""
    if not layer_.conv:
        return int(np.prod(shape[1:-1], dtype=np.int64))
    out = [(shape[2 + a] + layer_.pads[a] + layer_.pads[2 + a] - layer_.dilations[a] * (layer_.kernel[a] - 1) - 1)
           // layer_.strides[a] + 1 for a in range(2)]
    return max(out[0], 0) * max(out[1], 0)


def patches(layer_: Layer, x: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The rows the layer multiplies at the `chosen` output positions (flat indices into samples x positions) of
    input `x`: (groups, len(chosen), inputs per group), float32, in matrices()' order (a Conv's kernel tap by tap,
    each tap's channels together). A Conv's rows are gathered straight from the input, the padding's taps set to 0:
    a few thousand rows of a large input cost no copy of it."""
    x = np.asarray(x)
    if not layer_.conv:
        return x.reshape(-1, x.shape[-1])[chosen][None].astype(np.float32, copy=False)
    (top, left, _, right), (sh, sw), (dh, dw) = layer_.pads, layer_.strides, layer_.dilations
    count, (height, width) = len(chosen), x.shape[2:]
    n, rest = np.divmod(chosen, positions(layer_, x.shape))
    oh, ow = np.divmod(rest, (width + left + right - dw * (layer_.kernel[1] - 1) - 1) // sw + 1)
    i, j = np.divmod(np.arange(layer_.kernel[0] * layer_.kernel[1]), layer_.kernel[1])
    h, w = oh[:, None] * sh + i * dh - top, ow[:, None] * sw + j * dw - left  # rows, taps
    inside = (h >= 0) & (h < height) & (w >= 0) & (w < width)
    rows = x.reshape(x.shape[0], x.shape[1], -1)[n[:, None], :, np.where(inside, h * width + w, 0)]  # rows, taps, C
    rows = rows.astype(np.float32, copy=False)
    if not inside.all():
        rows[~inside] = 0
    g = layer_.groups
    if g == 1:
        return rows.reshape(1, count, -1)
    return rows.reshape(count, rows.shape[1], g, -1).transpose(2, 0, 1, 3).reshape(g, count, -1)
