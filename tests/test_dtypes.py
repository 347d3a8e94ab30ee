"""float16, bfloat16 and float64 activations: the gate runs in float32 with casts at its edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import amos_onnx


def model(dtype: int, nodes: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, ["N", 8])],
                              [helper.make_tensor_value_info("y", dtype, ["N", 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype, np_type, tol", [(TensorProto.FLOAT16, np.float16, 0.07),
                                                 (TensorProto.DOUBLE, np.float64, 0.07)])
@pytest.mark.parametrize("form", ["function", "inline"])
def test_cast_edges_keep_the_type_and_the_values(dtype: int, np_type: type, tol: float, form: str,
                                                 tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(model(dtype, [helper.make_node("Sigmoid", ["x"], ["y"], name="sig")]), str(src))
    amos_onnx.convert(src, tmp_path / "c.onnx", emit=form)
    converted = onnx.load(str(tmp_path / "c.onnx"))
    ops = [n.op_type for n in converted.graph.node]
    assert ops[0] == "Cast" and ops[-1] == "Cast" and "Sigmoid" not in ops
    if form == "function":
        assert ops[1:-1] == ["AmosGate"]
    else:
        assert ops[1:3] == ["Greater", "Where"] and ops[-2] == "Where"
    assert helper.get_attribute_value(converted.graph.node[0].attribute[0]) == TensorProto.FLOAT
    assert helper.get_attribute_value(converted.graph.node[-1].attribute[0]) == dtype
    assert converted.graph.node[-1].output[0] == "y"
    x = np.linspace(-8, 8, 800).reshape(-1, 8).astype(np_type)
    a = amos_onnx.session(src).run(None, {"x": x})[0]
    b = amos_onnx.session(tmp_path / "c.onnx").run(None, {"x": x})[0]
    assert b.dtype == np_type and np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= tol


def test_float16_composite_and_calibration(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(model(TensorProto.FLOAT16, [helper.make_node("Sigmoid", ["x"], ["s"]),
                                          helper.make_node("Mul", ["x", "s"], ["y"], name="silu")]), str(src))
    x = np.random.default_rng(0).normal(0, 2, (64, 8)).astype(np.float16)
    np.savez(tmp_path / "c.npz", x=x)
    report = amos_onnx.convert(src, tmp_path / "c.onnx", calib=tmp_path / "c.npz")
    assert [(s.status, s.source) for s in report.sites] == [("converted", "calibrated")]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node]
    assert ops == ["Cast", "AmosGate", "Cast"]
    a = amos_onnx.session(src).run(None, {"x": x})[0].astype(np.float64)
    b = amos_onnx.session(tmp_path / "c.onnx").run(None, {"x": x})[0].astype(np.float64)
    assert np.abs(a - b).max() <= 0.15  # the K=16 gate's error on these samples, in float16


def test_bfloat16_single_op_converts_and_integer_is_reported(tmp_path: Path) -> None:
    onnx.save(model(TensorProto.BFLOAT16, [helper.make_node("Relu", ["x"], ["y"], name="r")]), str(tmp_path / "b.onnx"))
    report = amos_onnx.convert(tmp_path / "b.onnx", tmp_path / "bc.onnx")
    assert report.sites[0].status == "converted"
    ops = [n.op_type for n in onnx.load(str(tmp_path / "bc.onnx")).graph.node]
    assert ops == ["Cast", "AmosGate", "Cast"]
    onnx.save(model(TensorProto.INT8, [helper.make_node("Relu", ["x"], ["y"], name="r")]), str(tmp_path / "i.onnx"))
    site = amos_onnx.inspect(tmp_path / "i.onnx").sites[0]
    assert site.status == "skipped" and site.reason == "input type is int8; only floating-point activations convert"
