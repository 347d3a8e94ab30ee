"""Recurrent ops apply their gates' activations inside the op. An LSTM, GRU or RNN is written out as Scans of its
gates' activations (rewrite.recurrent), computing what it computed, and they convert like any activation inside a
Scan body; one left as it is (sequence lengths, peepholes, other activations, ...) is a site that does not convert,
named with the activations it keeps and why. (ddddocr's CTC OCR model, a CNN and an LSTM,
was reported 11 of 11 sites converted with its LSTM left silently as it was.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.options import FindOptions
from amos_onnx.rewrite.recurrent import lower_recurrent
from amos_onnx.runtime import native_library

F = TensorProto.FLOAT
SEQ, BATCH, IN, HIDDEN = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # weight blocks per op


def recurrent_model(op: str = "LSTM", *, direction: str = "forward", outputs: tuple[str, ...] = ("y",),
                    initial: bool = False, opset: int = 17, extra_inputs: dict[int, np.ndarray] | None = None,
                    **attrs: object) -> onnx.ModelProto:
    """x -> Relu -> op (hidden HIDDEN, seeded weights) -> Sigmoid of each output it gives ("" for one omitted)."""
    rng = np.random.default_rng(0)
    dirs, blocks = 2 if direction == "bidirectional" else 1, GATES[op]
    arrays = {"w": rng.normal(0, 0.5, (dirs, blocks * HIDDEN, IN)), "rw": rng.normal(0, 0.5, (dirs, blocks * HIDDEN,
                                                                                                HIDDEN)),
              "b": rng.normal(0, 0.3, (dirs, 2 * blocks * HIDDEN))}
    inputs = ["r", "w", "rw", "b", "", "", "", ""]
    graph_inputs = [helper.make_tensor_value_info("x", F, [SEQ, BATCH, IN])]
    if initial:
        inputs[5:7] = ["h0", "c0"] if op == "LSTM" else ["h0", ""]
        graph_inputs += [helper.make_tensor_value_info(name, F, [dirs, BATCH, HIDDEN]) for name in inputs[5:7] if name]
    for index, value in (extra_inputs or {}).items():
        inputs[index] = f"extra{index}"
        arrays[f"extra{index}"] = value
    while inputs[-1] == "":
        inputs.pop()
    shapes = {0: [SEQ, dirs, BATCH, HIDDEN], 1: [dirs, BATCH, HIDDEN], 2: [dirs, BATCH, HIDDEN]}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, inputs, list(outputs), name="cell", hidden_size=HIDDEN, direction=direction, **attrs)]
    nodes += [helper.make_node("Sigmoid", [name], [f"z{i}"], name=f"sigmoid{i}") for i, name in enumerate(outputs)
              if name]
    inits = [onnx.numpy_helper.from_array(a if a.dtype == np.int32 else a.astype(np.float32), name)
             for name, a in arrays.items()]
    results = [helper.make_tensor_value_info(f"z{i}", F, shapes[i]) for i, name in enumerate(outputs) if name]
    graph = helper.make_graph(nodes, "g", graph_inputs, results, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    return {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in shapes.items()}


def ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


CASES = [  # op, attributes, direction, outputs, initial states given
    ("LSTM", {}, "forward", ("y",), False),
    ("LSTM", {}, "reverse", ("y", "y_h", "y_c"), True),
    ("LSTM", {}, "bidirectional", ("", "y_h"), False),
    ("LSTM", {}, "bidirectional", ("y", "", "y_c"), True),
    ("GRU", {}, "forward", ("y", "y_h"), True),
    ("GRU", {"linear_before_reset": 1}, "bidirectional", ("y", "y_h"), False),
    ("GRU", {"linear_before_reset": 1}, "reverse", ("", "y_h"), True),
    ("RNN", {}, "bidirectional", ("y", "y_h"), True),
    ("RNN", {}, "forward", ("y",), False),
]
STEP_OPS = {  # a step's nodes: per gate MatMul, Add and its activation, then the state's update
    "LSTM": ["MatMul", "Add", "Sigmoid"] * 3 + ["MatMul", "Add", "Tanh", "Mul", "Mul", "Add", "Tanh", "Mul",
                                                 "Identity"],
    "GRU": ["MatMul", "Add", "Sigmoid"] * 2 + ["Mul", "MatMul", "Add", "Add", "Tanh", "Sub", "Mul", "Add", "Identity"],
    "GRU lbr": ["MatMul", "Add", "Sigmoid"] * 2 + ["MatMul", "Add", "Mul", "Add", "Tanh", "Sub", "Mul", "Add",
                                                   "Identity"],
    "RNN": ["MatMul", "Add", "Tanh", "Identity"],
}


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize(("op", "attrs", "direction", "outputs", "initial"), CASES)
def test_a_recurrent_op_written_out_as_scans_computes_what_it_computed(op: str, attrs: dict, direction: str,
                                                                       outputs: tuple[str, ...], initial: bool,
                                                                       opset: int) -> None:
    model = recurrent_model(op, direction=direction, outputs=outputs, initial=initial, opset=opset, **attrs)
    lowered = lower_recurrent(model, FindOptions()).model
    onnx.checker.check_model(lowered, full_check=True)
    assert ops(model.graph) == ["Relu", op, *(["Sigmoid"] * sum(map(bool, outputs)))] and op not in ops(lowered.graph)
    scans = [n for n in lowered.graph.node if n.op_type == "Scan"]
    assert len(scans) == (2 if direction == "bidirectional" else 1)
    key = op + (" lbr" if attrs.get("linear_before_reset") else "")
    assert all(ops(scan.attribute[0].g) == STEP_OPS[key] for scan in scans)
    feed = feeds(model)
    want = amos_onnx.session(model, native=False).run(None, feed)
    got = amos_onnx.session(lowered, native=False).run(None, feed)
    for a, b in zip(want, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=2e-6)  # float32 sums in another order


def test_the_forward_lstm_becomes_these_nodes() -> None:
    lowered = lower_recurrent(recurrent_model(), FindOptions()).model
    assert ops(lowered.graph) == ["Relu", "Shape", "Gather", "Concat", "ConstantOfShape", *["MatMul", "Add"] * 4,
                                  "Scan", "Unsqueeze", "Identity", "Sigmoid"]


@pytest.mark.parametrize(("op", "attrs", "extra", "find", "why"), [
    ("GRU", {"activations": ["Relu", "Tanh"]}, {}, FindOptions(),
     "its gates apply Relu and Tanh inside the op, left as they are (not spiking; not lowered to Scans of spiking "
     "gates: its activations are Relu, Tanh)"),
    ("LSTM", {}, {4: np.full(BATCH, SEQ, np.int32)}, FindOptions(),
     "(not spiking; not lowered to Scans of spiking gates: it has sequence lengths)"),
    ("LSTM", {}, {7: np.zeros((1, 3 * HIDDEN), np.float32)}, FindOptions(),
     "not lowered to Scans of spiking gates: it has peephole weights)"),
    ("LSTM", {"clip": 3.0, "input_forget": 1}, {}, FindOptions(),
     "not lowered to Scans of spiking gates: it clips its cell input; it couples its input and forget gates)"),
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Tanh"]}, {}, FindOptions(),
     "its gates apply Sigmoid and Relu and Tanh inside the op, left as they are (not spiking; not lowered to Scans "
     "of spiking gates: its activations are Sigmoid, Relu, Tanh)"),
    ("LSTM", {}, {}, FindOptions(skip=frozenset({"Tanh"})),
     "(not spiking; --only or --skip leave out its gates' Sigmoid or Tanh)"),
    ("RNN", {}, {}, FindOptions(only=frozenset({"Relu", "Sigmoid"})),
     "its gates apply Tanh inside the op, left as they are (not spiking; --only or --skip leave out its gates' Tanh)"),
])
def test_a_recurrent_op_left_as_it_is_says_why(op: str, attrs: dict, extra: dict, find: FindOptions, why: str,
                                               tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(recurrent_model(op, extra_inputs=extra, **attrs), str(path))
    report = amos_onnx.pipeline.inspect(path, find)
    cell = next(s for s in report.sites if s.node == "cell")
    assert cell.status == "skipped" and cell.op == op
    assert why in cell.reason and cell.reason.startswith("recurrent op: its gates apply ")
    assert cell.reason.endswith("; the layers around it convert")


@pytest.mark.parametrize(("op", "attrs", "direction", "per_direction"), [
    ("LSTM", {}, "forward", 5), ("LSTM", {}, "bidirectional", 5), ("GRU", {"linear_before_reset": 1}, "bidirectional",
                                                                   3), ("RNN", {}, "forward", 1)])
def test_a_recurrent_op_converts_whole_and_the_native_op_gives_the_function_form_to_the_bit(
        op: str, attrs: dict, direction: str, per_direction: int, tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    model = recurrent_model(op, direction=direction, outputs=("y", "y_h"), **attrs)
    onnx.save(model, str(src))
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (8 * SEQ, BATCH, IN)).astype(np.float32))
    report = amos_onnx.convert(src, out, calib=tmp_path / "calib.npz")
    body_sites = [s for s in report.sites if "/body/" in s.node]
    assert len(body_sites) == per_direction * (2 if direction == "bidirectional" else 1)
    assert all(s.status == "converted" and s.source == "calibrated" for s in body_sites)  # step by step
    assert [s.status for s in report.sites if "/body/" not in s.node] == ["converted"] * 3  # relu, both sigmoids
    assert f"1 {op} written out as Scans of their gates' activations, which convert with the sites inside Scan " \
           "bodies" in report.notes
    converted = onnx.load(str(out))
    onnx.checker.check_model(converted, full_check=True)

    def every_op(graph: onnx.GraphProto) -> list[str]:
        return [op for n in graph.node for op in [n.op_type, *(o for a in n.attribute if a.HasField("g")
                                                               for o in every_op(a.g))]]

    assert not {"Relu", "Sigmoid", "Tanh", op} & set(every_op(converted.graph))
    assert every_op(converted.graph).count("AmosGate") == 3 + len(body_sites)
    feed = feeds(model, 3)
    want = amos_onnx.session(src, native=False).run(None, feed)
    got = amos_onnx.session(out, native=False).run(None, feed)
    # gates inside the recurrence, errors carried over five steps: measured up to 0.018 (the RNN)
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 0.03, np.abs(a - b).max()
    if native_library() is not None:
        for a, b in zip(got, amos_onnx.session(out).run(None, feed)):
            np.testing.assert_array_equal(b, a)


def test_an_lstm_whose_weights_stay_in_their_external_file_is_left_as_it_is(tmp_path: Path) -> None:
    """Large external tensors are not read into memory (load.SMALL_EXTERNAL): such an LSTM is not lowered, and
    the rest of the model still converts."""
    rng = np.random.default_rng(0)
    hidden, width = 160, 8  # R: 4 x 160 x 160 float32, 400 KiB
    w = rng.normal(0, 0.3, (1, 4 * hidden, width)).astype(np.float32)
    r = rng.normal(0, 0.05, (1, 4 * hidden, hidden)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"),
         helper.make_node("LSTM", ["a", "w", "r"], ["y"], name="cell", hidden_size=hidden)], "g",
        [helper.make_tensor_value_info("x", F, [SEQ, BATCH, width])],
        [helper.make_tensor_value_info("y", F, [SEQ, 1, BATCH, hidden])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(r, "r")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location="m.data", size_threshold=1024)
    for report in (amos_onnx.pipeline.inspect(path), amos_onnx.convert(path, tmp_path / "c.onnx")):
        cell = next(s for s in report.sites if s.node == "cell")
        assert cell.status == "skipped"
        assert "not lowered to Scans of spiking gates: its weights W and R are neither float32 constants held in the " \
               "model file nor computed from them alone" in cell.reason
        assert [s.status for s in report.sites if s.node == "relu"][0] in ("would convert", "converted")
    assert [n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node] == ["AmosGate", "LSTM"]


def _computed_weight_model(from_input: bool) -> onnx.ModelProto:
    """An LSTM whose W is a Concat of two constant halves (as exporters reorder gates), or a graph input."""
    model = recurrent_model()
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    halves = [onnx.numpy_helper.from_array(np.ascontiguousarray(part), f"w{i}")
              for i, part in enumerate(np.split(w, 2, axis=1))]
    kept = [t for t in model.graph.initializer if t.name != "w"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if from_input:
        model.graph.input.append(helper.make_tensor_value_info("w", F, list(w.shape)))
    else:
        model.graph.initializer.extend(halves)
        model.graph.node.insert(0, helper.make_node("Concat", ["w0", "w1"], ["w"], name="join", axis=1))
    return model


def test_an_lstm_whose_weights_are_computed_from_constants_is_written_out() -> None:
    model = _computed_weight_model(from_input=False)
    lowered = lower_recurrent(model, FindOptions()).model
    assert "LSTM" not in ops(lowered.graph) and "Scan" in ops(lowered.graph)
    feed = feeds(model)
    np.testing.assert_allclose(amos_onnx.session(lowered, native=False).run(None, feed)[0],
                               amos_onnx.session(model, native=False).run(None, feed)[0], atol=2e-6)


def test_an_lstm_whose_weights_are_an_input_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_computed_weight_model(from_input=True), str(path))
    cell = next(s for s in amos_onnx.pipeline.inspect(path).sites if s.node == "cell")
    assert cell.status == "skipped"
    assert "its weights W and R are neither float32 constants held in the model file nor computed from them " \
           "alone" in cell.reason


def test_an_lstm_inside_an_if_branch_is_written_out_there() -> None:
    inner = recurrent_model()
    branch = helper.make_graph(list(inner.graph.node), "then", [], list(inner.graph.output),
                               list(inner.graph.initializer))
    other = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["z_else"], name="plain")], "else", [],
                              [helper.make_tensor_value_info("z_else", F, None)])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["z"], name="choose", then_branch=branch,
                                                else_branch=other)], "g",
                              [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", F, [SEQ, BATCH, IN])],
                              [helper.make_tensor_value_info("z", F, None)])
    graph.output[0].name = "z"
    branch.output[0].name = "z0"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered = lower_recurrent(model, FindOptions()).model
    then = next(a.g for a in lowered.graph.node[0].attribute if a.name == "then_branch")
    assert "LSTM" not in ops(then) and "Scan" in ops(then)
    x = feeds(inner)["x"]
    for cond in (True, False):
        feed = {"cond": np.array(cond), "x": x}
        np.testing.assert_allclose(amos_onnx.session(lowered, native=False).run(None, feed)[0],
                                   amos_onnx.session(model, native=False).run(None, feed)[0], atol=2e-6)


def test_a_model_without_recurrent_ops_is_not_copied() -> None:
    model = recurrent_model()
    plain = helper.make_model(helper.make_graph([model.graph.node[0]], "g", list(model.graph.input),
                                                [helper.make_tensor_value_info("r", F, None)]))
    lowered = lower_recurrent(plain, FindOptions())
    assert lowered.model is plain and not lowered.written and not lowered.left
