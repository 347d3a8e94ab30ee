"""float16, bfloat16 and float64 activations: the gate runs in float32 with casts at its edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, save
from onnx import TensorProto, helper, numpy_helper

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


def test_quantized_graphs_are_left_alone_and_reported(tmp_path: Path) -> None:
    """onnxruntime's own static quantizer on the digits CNN folds the Relus into QLinearConv/QGemm: nothing
    converts, the report says why; a com.microsoft QLinearSigmoid is a skipped site with its reason."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    images = np.load(ROOT / "examples/digits/digits_train.npz")["image"][:64]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": images[i : i + 8]} for i in range(0, 64, 8)])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantized = tmp_path / "q.onnx"
    quantize_static(str(ROOT / "examples/digits/digits_cnn.onnx"), str(quantized), Reader(),
                    quant_format=QuantFormat.QOperator)
    report = amos_onnx.convert(quantized, tmp_path / "q_out.onnx")
    assert report.sites == []
    assert any(n.startswith("quantized graph (") and "QLinearConv x2" in n and "convert the float model" in n
               for n in report.notes), report.notes
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("QLinearSigmoid", ["q", "s", "z", "s", "z"], ["qy"], domain="com.microsoft", name="qsig"),
             helper.make_node("DequantizeLinear", ["qy", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    src = save(model, tmp_path / "qsig.onnx")
    inspected = amos_onnx.inspect(src)
    assert [(s.node, s.op, s.status, s.reason) for s in inspected.sites] == [
        ("qsig", "QLinearSigmoid", "skipped",
         "quantized activation (integer in and out): left alone; convert the float "
         "model before quantizing")]
    amos_onnx.convert(src, tmp_path / "qsig_out.onnx")
    x = np.linspace(-5, 5, 40, dtype=np.float32).reshape(10, 4)
    a = amos_onnx.session(src).run(None, {"x": x})[0]
    b = amos_onnx.session(tmp_path / "qsig_out.onnx").run(None, {"x": x})[0]
    assert np.array_equal(a, b)
