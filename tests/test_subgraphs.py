"""Activations inside If, Loop and Scan bodies (nested too) convert; calibration reaches into If branches, and
falls back to data-free ranges inside Loop and Scan bodies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import amos_onnx

F = TensorProto.FLOAT


def branch(name: str, op: str, x: str = "x") -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, [x], [f"{name}_out"], name=f"{name}_act")], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", F, ["N", 4])])


def if_model() -> onnx.ModelProto:
    node = helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch("then", "Relu"),
                            else_branch=branch("else", "Sigmoid"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(nested: bool) -> onnx.ModelProto:
    """Loop: state <- tanh(state) (and, nested, an If on a constant choosing Relu or Sigmoid of it)."""
    nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Tanh", ["s_in"], ["t"], name="body_tanh")]
    if nested:
        nodes.append(helper.make_node("Constant", [], ["flag"], value=helper.make_tensor("f", TensorProto.BOOL, [],
                                                                                         [1])))
        nodes.append(helper.make_node("If", ["flag"], ["s_out"], name="inner_if",
                                      then_branch=branch("in_then", "Relu", "t"),
                                      else_branch=branch("in_else", "Sigmoid", "t")))
    else:
        nodes.append(helper.make_node("Identity", ["t"], ["s_out"]))
    body = helper.make_graph(nodes, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                                             helper.make_tensor_value_info("s_in", F, ["N", 4])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("s_out", F, ["N", 4])])
    loop = helper.make_node("Loop", ["trip", "", "x"], ["y"], name="loop", body=body)
    graph = helper.make_graph([loop], "g", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 4])],
                              [helper.make_tensor("trip", TensorProto.INT64, [], [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def scan_model() -> onnx.ModelProto:
    body = helper.make_graph([helper.make_node("Add", ["acc", "row"], ["sum"]),
                              helper.make_node("Elu", ["sum"], ["acc_out"], name="scan_elu"),
                              helper.make_node("Identity", ["acc_out"], ["out_row"])], "scan_body",
                             [helper.make_tensor_value_info("acc", F, [4]), helper.make_tensor_value_info("row", F,
                                                                                                          [4])],
                             [helper.make_tensor_value_info("acc_out", F, [4]),
                              helper.make_tensor_value_info("out_row", F, [4])])
    scan = helper.make_node("Scan", ["init", "x"], ["final", "y"], name="scan", body=body, num_scan_inputs=1)
    graph = helper.make_graph([scan], "g", [helper.make_tensor_value_info("init", F, [4]),
                                            helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("final", F, [4]),
                               helper.make_tensor_value_info("y", F, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gate_ops(graph: onnx.GraphProto) -> list[str]:
    """Op types of every node in the graph and its subgraphs, depth first."""
    return [node.op_type for node in gate_nodes(graph)]


CASES = {
    "if": (if_model, ["choose/then_branch/then_act", "choose/else_branch/else_act"]),
    "loop": (lambda: loop_model(False), ["loop/body/body_tanh"]),
    "loop-if": (lambda: loop_model(True), ["loop/body/body_tanh", "loop/body/inner_if/then_branch/in_then_act",
                                           "loop/body/inner_if/else_branch/in_else_act"]),
    "scan": (scan_model, ["scan/body/scan_elu"]),
}


def feeds(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    if name == "if":
        return {"cond": np.array(True), "x": x}
    if name == "scan":
        return {"init": np.zeros(4, np.float32), "x": x}
    return {"x": x}


@pytest.mark.parametrize("form", ["function", "inline"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_subgraph_activations_convert(name: str, form: str, tmp_path: Path) -> None:
    build, expected = CASES[name]
    src = tmp_path / "m.onnx"
    onnx.save(build(), str(src))
    report = amos_onnx.convert(src, tmp_path / "c.onnx", emit=form)
    assert sorted(s.node for s in report.sites if s.status == "converted") == sorted(expected)
    converted = onnx.load(str(tmp_path / "c.onnx"))
    onnx.checker.check_model(converted, full_check=True)
    ops = gate_ops(converted.graph)
    assert not {"Relu", "Sigmoid", "Tanh", "Elu"} & set(ops)
    if form == "function":
        assert ops.count("AmosGate") == len(expected)
    x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(-1, 4)
    for cond in ([True, False] if name == "if" else [True]):
        feed = feeds(name, x)
        if name == "if":
            feed["cond"] = np.array(cond)
        a = amos_onnx.session(src).run(None, feed)
        b = amos_onnx.session(tmp_path / "c.onnx").run(None, feed)
        for ref, out in zip(a, b):
            assert np.abs(ref - out).max() <= 0.3  # gate errors compound through the loop's three steps


def test_calibration_falls_back_to_data_free_inside_subgraphs(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(loop_model(False), str(src))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    report = amos_onnx.convert(src, tmp_path / "c.onnx", calib=tmp_path / "c.npz")
    assert [s.source for s in report.sites] == ["data-free"]
    assert "1 sites inside Loop bodies use data-free ranges: calibration reaches into If branches and Scan bodies " \
           "only" in report.notes


def batched_scan_model() -> onnx.ModelProto:
    """A Scan over axis 1 of x (N, T, 4) from a state (N, 4): acc <- Elu(acc + x[:, t]), every step stacked."""
    body = helper.make_graph([helper.make_node("Add", ["acc", "row"], ["sum"]),
                              helper.make_node("Elu", ["sum"], ["acc_out"], name="scan_elu"),
                              helper.make_node("Identity", ["acc_out"], ["out_row"])], "scan_body",
                             [helper.make_tensor_value_info("acc", F, ["N", 4]),
                              helper.make_tensor_value_info("row", F, ["N", 4])],
                             [helper.make_tensor_value_info("acc_out", F, ["N", 4]),
                              helper.make_tensor_value_info("out_row", F, ["N", 4])])
    scan = helper.make_node("Scan", ["init", "x"], ["final", "y"], name="scan", body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_output_axes=[1])
    graph = helper.make_graph([scan], "g", [helper.make_tensor_value_info("init", F, ["N", 4]),
                                            helper.make_tensor_value_info("x", F, ["N", 5, 4])],
                              [helper.make_tensor_value_info("final", F, ["N", 4]),
                               helper.make_tensor_value_info("y", F, ["N", 5, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_calibration_reaches_into_scan_bodies_step_by_step(tmp_path: Path) -> None:
    """The Scan's Elu sees acc + x[:, t] at every step t: its calibration samples are exactly those values over
    every step of every sample, carried out as an extra per-step output of the Scan (its scan_output_axes grown
    by one); the converted model stays within the gate's error, carried over five steps, of the original's
    (measured 0.048 at K=16; 0.064 data-free)."""
    from amos_onnx.calibrate.branches import expose_branches
    from amos_onnx.pipeline import plan

    src = tmp_path / "scan.onnx"
    onnx.save(batched_scan_model(), str(src))
    rng = np.random.default_rng(0)
    init, x = rng.normal(0, 1, (6, 4)).astype(np.float32), rng.normal(0, 1, (6, 5, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", init=init, x=x)
    p = plan(src, tmp_path / "c.npz")
    site = p.sites[0]
    acc, seen = init.copy(), []
    for t in range(x.shape[1]):  # the body: acc_out = Elu(acc + x[:, t])
        total = acc + x[:, t]
        seen.append(total)
        acc = np.where(total > 0, total, np.expm1(total)).astype(np.float32)
    values = np.concatenate(seen)
    res = p.reservoirs[site.samples]
    assert res.seen == values.size
    assert res.lo == pytest.approx(float(values.min()), abs=1e-5) and res.hi == pytest.approx(float(values.max()),
                                                                                              abs=1e-5)
    probe = onnx.ModelProto()
    probe.CopyFrom(p.model)
    assert list(expose_branches(probe, p.sites).values()) == [site.samples]
    scan = probe.graph.node[0]
    assert len(scan.output) == 3 and [n.op_type for n in scan.attribute[0].g.node][-1] == "Identity"
    assert list(next(a for a in scan.attribute if a.name == "scan_output_axes").ints) == [1, 0]
    report = amos_onnx.convert(src, tmp_path / "c.onnx", calib=tmp_path / "c.npz", k=16)
    assert [s.source.value for s in report.sites] == ["calibrated"]
    assert not any("data-free ranges" in note for note in report.notes)
    want = amos_onnx.session(src, native=False).run(None, {"init": init, "x": x})
    got = amos_onnx.session(tmp_path / "c.onnx").run(None, {"init": init, "x": x})
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 0.1, np.abs(a - b).max()


def test_calibration_reaches_into_the_if_branch_that_runs(tmp_path: Path) -> None:
    """An If whose then-branch takes Relu and else-branch Sigmoid of the outer x, calibrated on data whose
    condition is always true: the Relu site is calibrated on what its branch saw (x's 200 values, their exact
    range), the Sigmoid site, whose branch never ran, falls back to its data-free range; the output stays within
    the gate's error of the original's (0.01 at K=8 on x's range). The calibration's model carries the site input
    out through an extra output of the If (the other branch an empty tensor)."""
    from amos_onnx.calibrate.branches import expose_branches
    from amos_onnx.pipeline import plan

    src = tmp_path / "if.onnx"
    onnx.save(if_model(), str(src))
    x = np.random.default_rng(0).normal(0, 1, (50, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", cond=np.array(True), x=x)
    p = plan(src, tmp_path / "c.npz")
    relu, sigmoid = (next(s for s in p.sites if s.op == op) for op in ("Relu", "Sigmoid"))
    assert relu.samples == "y/then_branch/x" and relu.samples in p.reservoirs
    res = p.reservoirs[relu.samples]
    assert res.seen == 200 and res.lo == float(x.min()) and res.hi == float(x.max())
    assert p.reservoirs[sigmoid.samples].seen == 0
    probe = onnx.ModelProto()
    probe.CopyFrom(p.model)
    exposed = expose_branches(probe, p.sites)
    assert sorted(exposed.values()) == sorted([relu.samples, sigmoid.samples])
    node = next(n for n in probe.graph.node if n.op_type == "If")
    assert len(node.output) == 3 and [n.op_type for n in node.attribute[0].g.node][-2:] == ["Identity", "Constant"]
    report = amos_onnx.convert(src, tmp_path / "c.onnx", calib=tmp_path / "c.npz", k=8)
    assert {s.node: s.source.value for s in report.sites} == {relu.name: "calibrated", sigmoid.name: "data-free"}
    assert not any("data-free ranges" in note for note in report.notes)
    got = amos_onnx.session(tmp_path / "c.onnx").run(None, {"cond": np.array(True), "x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x, 0), rtol=0, atol=0.01)


def test_per_channel_gates_inside_a_scan_body_keep_the_site_s_channel_axis(tmp_path: Path) -> None:
    """The Scan stacks its body's samples along a leading axis; merged into the site's first axis when sampled, the
    channels stay on the site's axis 1 (the graph fuzzer's recurrent blocks found gates on axis 2 of a rank-2
    input, and before that a gate counting the batch as channels)."""
    src = tmp_path / "scan.onnx"
    onnx.save(batched_scan_model(), str(src))
    rng = np.random.default_rng(0)
    init, x = rng.normal(0, 1, (6, 4)).astype(np.float32), rng.normal(0, 1, (6, 5, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", init=init, x=x)
    report = amos_onnx.convert(src, tmp_path / "c.onnx", calib=tmp_path / "c.npz", k=16, per_channel=True)
    assert [s.source.value for s in report.sites] == ["calibrated per channel"]
    gate = next(n for n in gate_nodes(onnx.load(str(tmp_path / "c.onnx")).graph) if n.op_type == "AmosGate")
    assert next(a.i for a in gate.attribute if a.name == "axis") == 1
    want = amos_onnx.session(src, native=False).run(None, {"init": init, "x": x})
    got = amos_onnx.session(tmp_path / "c.onnx", native=False).run(None, {"init": init, "x": x})
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 0.1, np.abs(a - b).max()
    for a, b in zip(got, amos_onnx.session(tmp_path / "c.onnx").run(None, {"init": init, "x": x})):
        np.testing.assert_array_equal(b, a)


def gate_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of the graph and its subgraphs, depth first."""
    found = []
    for node in graph.node:
        found.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                found += gate_nodes(attr.g)
    return found
