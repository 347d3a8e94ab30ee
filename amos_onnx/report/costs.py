"""Operation counts from shapes: multiply-accumulates of the original network, synaptic operations of the
spiking one.

- MACs per input: Conv/ConvTranspose (output elements x input channels per group x kernel area),
  Gemm and MatMul (output elements x inner dimension), with the graph inputs' batch set to 1 and
  shapes inferred by onnx.
- Synaptic operations (the figure SNN Toolbox and sinabs report): every spike of a gate travels to
  the weights its output element feeds. A gate's fan-out is found by following its output through
  ops that only move or combine values (pooling, reshapes, adds, concatenations) to the weighted
  ops that consume it: Conv (output channels per group x kernel area / stride area), Gemm and
  MatMul (output features). Spikes times fan-out, summed over gates, is the estimate.
"""

from __future__ import annotations

import math
from typing import Any

import onnx
from onnx import shape_inference

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
PASS_THROUGH = {
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Add", "Sub", "Concat", "Split", "Slice", "Identity", "Dropout", "Pad", "Resize", "Upsample",
    "Cast", "BatchNormalization", "Mul", "Div",
}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Inferred tensor shapes with every free dimension of the graph inputs set to 1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # Weights left on disk become typed inputs: their shapes are all inference needs from them.
    on_disk = [t for t in copy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    kept = [t for t in copy.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    for tensor in on_disk:
        copy.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        inferred = copy
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def macs(model: onnx.ModelProto) -> dict[str, object]:
    """Multiply-accumulates per input of the weighted ops whose shapes are known, and how many were not."""
    shapes = _shapes(model)
    total, unknown = 0, 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if out is None or w is None:
            unknown += 1
            continue
        if node.op_type == "Conv":
            total += math.prod(out) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0])
            if x is None:
                unknown += 1
                continue
            total += math.prod(x) * math.prod(w[1:])
        elif node.op_type == "Gemm":
            total += math.prod(out) * (w[1] if _attr(node, "transB", 0) else w[0])
        else:  # MatMul
            total += math.prod(out) * (w[-2] if len(w) >= 2 else w[0])
    return {"macs_per_input": total, "weighted_ops_without_shapes": unknown}


def _fan_out_of(node: onnx.NodeProto, tensor: str, weights: dict[str, tuple[int, ...]]) -> float | None:
    """Weights one input element of a weighted node reaches, when it enters as the data input (from the
    weight shapes alone: the weights themselves may stay on disk)."""
    if not node.input or node.input[0] != tensor:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] == tensor and node.input[0] in weights:
            return float(weights[node.input[0]][-2])  # W @ x: x's elements reach W's rows
        return None
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        group = int(_attr(node, "group", 1))
        out_channels = w[0] if node.op_type == "Conv" else w[1] * group
        strides = _attr(node, "strides", [1] * (len(w) - 2))
        per_group = out_channels / group
        kernel = math.prod(w[2:])
        if node.op_type == "Conv":
            return per_group * kernel / math.prod(strides)
        return per_group * kernel
    if node.op_type == "Gemm":
        return float(w[0] if _attr(node, "transB", 0) else w[1])
    return float(w[-1])  # MatMul x @ W


def fan_outs(model: onnx.ModelProto) -> dict[str, float]:
    """Per gate output tensor: weights each of its elements reaches (0 when none is found)."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer if len(t.dims) >= 2}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reach(tensor: str, seen: set[str]) -> float:
        total = 0.0
        for node in consumers.get(tensor, []):
            if node.op_type in WEIGHTED:
                total += _fan_out_of(node, tensor, weights) or 0.0
            elif node.op_type in PASS_THROUGH:
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        total += reach(out, seen)
        return total

    from amos_onnx.report.spikes import gate_nodes

    return {n.output[0]: reach(n.output[0], {n.output[0]}) for n in gate_nodes(model)}
