"""Every compensation and budget option on graphs whose gates sit at the model's edges: a site reading the graph's
input (no segment of a walk makes it), a gate whose output is a graph output and feeds a layer too, a model whose
only output is an integer (nothing to judge a compensation by). Each conversion keeps the default conversion's
op sequence, stays close to the original in onnxruntime, and the function form and the native op agree to the
bit. (Sequential refits stopped on a KeyError on the first kind.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import save
from onnx import TensorProto, helper, numpy_helper
from test_compensate import _ops

import amos_onnx
from amos_onnx.runtime import session

_RNG = np.random.default_rng(0)
_W = numpy_helper.from_array(_RNG.normal(0, 0.5, (4, 4)).astype(np.float32), "W")
_B = numpy_helper.from_array(_RNG.normal(0, 0.1, (4,)).astype(np.float32), "B")


def _io(name: str, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, ["N", 4 if dtype == TensorProto.FLOAT else 1])


def _model(nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_io("x")], outputs, [_W, _B])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def relu_on_input() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_io("y")])


def silu_on_input() -> onnx.ModelProto:
    return _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                  [_io("y")])


def relu_on_input_then_gemm() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                   helper.make_node("Gemm", ["a", "W", "B"], ["h"]),
                   helper.make_node("Tanh", ["h"], ["y"], name="tanh")], [_io("y")])


def gate_output_is_a_graph_output() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "W", "B"], ["h"]), helper.make_node("Tanh", ["h"], ["a"], name="t"),
                   helper.make_node("Gemm", ["a", "W", "B"], ["h2"]),
                   helper.make_node("Relu", ["h2"], ["y"], name="r")], [_io("a"), _io("y")])


def integer_output_only() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "W", "B"], ["h"]), helper.make_node("Relu", ["h"], ["a"], name="r"),
                   helper.make_node("Gemm", ["a", "W", "B"], ["z"]),
                   helper.make_node("ArgMax", ["z"], ["y"], axis=1)], [_io("y", TensorProto.INT64)])


SHAPES: list[Callable[[], onnx.ModelProto]] = [relu_on_input, silu_on_input, relu_on_input_then_gemm,
                                               gate_output_is_a_graph_output, integer_output_only]
OPTIONS: list[dict[str, object]] = [
    {"sequential": True}, {"bias_correction": True}, {"per_channel": True, "sequential": True},
    {"latency": 8, "sequential": True}, {"spike_penalty": 0.01, "sequential": True},
    {"k": "auto", "sequential": True}, {"sequential": True, "bias_correction": True}]


_DEFAULT_OPS: dict[str, list[str]] = {}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("build", SHAPES, ids=lambda b: b.__name__)
def test_every_option_converts_a_model_with_gates_at_its_edges(tmp_path: Path, build: Callable[[], onnx.ModelProto],
                                                               options: dict[str, object]) -> None:
    """48 calibration samples (weight reconstruction, the default, runs from 32); on 64 other inputs, per output,
    mean |converted - original| at most 0.2x the original's mean |output| with --latency 8 (two gates at K=4:
    measured up to 0.17), 0.1x otherwise (measured 0.001-0.09); the integer output agrees on 62 of 64 rows or
    more (measured 63, 62 with the spike penalty). The same ops as the default conversion; the input file untouched."""
    path = save(build(), tmp_path / "model.onnx")
    before = path.read_bytes()
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(0, 1.5, (48, 4)).astype(np.float32))
    if build.__name__ not in _DEFAULT_OPS:  # the default conversion's ops, once per graph
        amos_onnx.convert(path, tmp_path / "default.onnx", tmp_path / "calib.npz", progress=False)
        _DEFAULT_OPS[build.__name__] = _ops(onnx.load(str(tmp_path / "default.onnx")))
    amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", progress=False, **options)  # type: ignore[arg-type]
    assert _ops(onnx.load(str(tmp_path / "out.onnx"))) == _DEFAULT_OPS[build.__name__]
    feed = {"x": np.random.default_rng(2).normal(0, 1.5, (64, 4)).astype(np.float32)}
    original = session(path, native=False).run(None, feed)
    function = session(tmp_path / "out.onnx", native=False).run(None, feed)
    native = session(tmp_path / "out.onnx", native=True).run(None, feed)
    bound = 0.2 if "latency" in options else 0.1
    for want, got, fused in zip(original, function, native):
        assert np.array_equal(got, fused)
        if want.dtype == np.int64:
            assert np.count_nonzero(want == got) >= 62
            continue
        scale = float(np.mean(np.abs(want.astype(np.float64))))
        assert float(np.mean(np.abs(got.astype(np.float64) - want))) <= bound * scale
    assert path.read_bytes() == before
