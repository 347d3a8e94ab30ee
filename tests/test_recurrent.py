"""Recurrent ops (LSTM, GRU, RNN) apply their gates' activations inside the op: each is a site that does not convert,
named in the report with the activations it keeps, and the layers around it convert (ddddocr's CTC OCR model, a CNN
and an LSTM, was reported 11 of 11 sites converted with its LSTM left silently as it was)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.runtime import native_library

F = TensorProto.FLOAT
SEQ, BATCH, IN, HIDDEN = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # weight blocks per op


def recurrent_model(op: str, *, bidirectional: bool = False, outputs: tuple[str, str] = ("y", ""),
                    activations: list[str] | None = None) -> onnx.ModelProto:
    """x -> Relu -> op (hidden HIDDEN, seeded weights) -> Sigmoid of its first output given."""
    rng = np.random.default_rng(0)
    dirs, blocks = 2 if bidirectional else 1, GATES[op]
    w = (rng.normal(0, 0.5, (dirs, blocks * HIDDEN, IN))).astype(np.float32)
    r = (rng.normal(0, 0.5, (dirs, blocks * HIDDEN, HIDDEN))).astype(np.float32)
    b = (rng.normal(0, 0.1, (dirs, 2 * blocks * HIDDEN))).astype(np.float32)
    attrs: dict[str, object] = {"hidden_size": HIDDEN, "direction": "bidirectional" if bidirectional else "forward"}
    if activations is not None:
        attrs["activations"] = activations
    out = next(name for name in outputs if name)
    shape = [SEQ, dirs, BATCH, HIDDEN] if out == "y" else [dirs, BATCH, HIDDEN]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, ["r", "w", "rw", "b"], list(outputs), name="cell", **attrs),
             helper.make_node("Sigmoid", [out], ["z"], name="sigmoid")]
    inits = [helper.make_tensor(name, F, a.shape, a.ravel()) for name, a in (("w", w), ("rw", r), ("b", b))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [SEQ, BATCH, IN])],
                              [helper.make_tensor_value_info("z", F, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("op", "activations", "kept"), [
    ("LSTM", None, "Sigmoid and Tanh"),
    ("GRU", None, "Sigmoid and Tanh"),
    ("RNN", None, "Tanh"),
    ("GRU", ["Relu", "Tanh"], "Relu and Tanh"),
])
def test_a_recurrent_op_is_a_site_that_names_the_activations_it_keeps(op: str, activations: list[str] | None,
                                                                      kept: str, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(recurrent_model(op, activations=activations), str(path))
    report = amos_onnx.inspect(path)
    assert [(s.node, s.status) for s in report.sites] == [("relu", "would convert"), ("cell", "skipped"),
                                                          ("sigmoid", "would convert")]
    assert report.sites[1].op == op
    assert report.sites[1].reason == (f"recurrent op: its gates apply {kept} inside the op, left as they are (not "
                                      "spiking); the layers around it convert")


@pytest.mark.parametrize(("bidirectional", "outputs"), [(False, ("y", "")), (True, ("", "y_h"))])
def test_the_layers_around_a_recurrent_op_convert_and_it_stays(bidirectional: bool, outputs: tuple[str, str],
                                                               tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(recurrent_model("LSTM", bidirectional=bidirectional, outputs=outputs), str(src))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (8 * SEQ, BATCH, IN)).astype(np.float32))
    report = amos_onnx.convert(src, out, calib=tmp_path / "calib.npz")
    assert [(s.node, s.status) for s in report.sites] == [("relu", "converted"), ("cell", "skipped"),
                                                          ("sigmoid", "converted")]
    converted = onnx.load(str(out))
    onnx.checker.check_model(converted, full_check=True)
    assert [n.op_type for n in converted.graph.node] == ["AmosGate", "LSTM", "AmosGate"]
    assert list(converted.graph.node[1].output) == list(outputs)
    x = rng.normal(0, 1, (SEQ, BATCH, IN)).astype(np.float32)
    want = amos_onnx.session(src, native=False).run(None, {"x": x})[0]
    got = amos_onnx.session(out, native=False).run(None, {"x": x})[0]
    assert got.shape == want.shape
    # Relu at K=10 and Sigmoid at K=12, calibrated; measured 0.0004 and 0.0094
    assert np.abs(got - want).max() <= 0.03, np.abs(got - want).max()
    if native_library() is not None:  # the native op: the function form's outputs to the bit
        np.testing.assert_array_equal(amos_onnx.session(out).run(None, {"x": x})[0], got)
