"""validate and report count the spikes of gates inside If branches and Scan bodies (a written-out LSTM's), their
inputs brought out as calibration brings out a site's; gates inside Loop bodies are said to be left uncounted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_recurrent import recurrent_model
from test_subgraphs import batched_scan_model, if_model, loop_model

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.gate import simulate
from amos_onnx.report.spikes import SpikeCounter, counted_gates, exposed_model, gate_nodes, gate_params


def _converted(model: onnx.ModelProto, tmp_path: Path, data: dict[str, np.ndarray], **options: object) -> Path:
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **data)  # type: ignore[arg-type]
    amos_onnx.convert(tmp_path / "m.onnx", tmp_path / "c.onnx", calib=tmp_path / "d.npz", **options)
    return tmp_path / "c.onnx"


def test_the_gates_of_the_if_branch_that_ran_are_counted_and_the_other_s_saw_nothing(tmp_path: Path) -> None:
    """If(cond, Relu(x), Sigmoid(x)) with cond true: the Relu gate sees exactly x (its spikes are the gate's on x,
    counted by hand), the Sigmoid gate nothing; the probe model carries each gate's input out of the If (an
    Identity in the branch holding it, an empty Constant in the other)."""
    x = np.random.default_rng(0).normal(0, 1, (50, 4)).astype(np.float32)
    out = _converted(if_model(), tmp_path, {"cond": np.array(True), "x": x})
    converted = onnx.load(str(out))
    gates, loops = counted_gates(converted)
    assert [(g.node.name, g.inside, g.scans) for g in gates] == [  # in the If's attribute order
        ("choose/else_branch/else_act/amos", "y else_branch", 0),
        ("choose/then_branch/then_act/amos", "y then_branch", 0)]
    assert loops == 0
    probe = exposed_model(converted, gates)
    node = next(n for n in probe.graph.node if n.op_type == "If")
    assert list(node.output) == ["y", "amos/spikes/0/0", "amos/spikes/1/0"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in node.attribute}
    assert branches == {"else_branch": ["AmosGate", "Identity", "Constant"],
                        "then_branch": ["AmosGate", "Constant", "Identity"]}
    report = amos_onnx.validate(tmp_path / "m.onnx", out, tmp_path / "d.npz")
    sigmoid, relu = report.gates
    _, spikes = simulate(gate_params(gates[1].node), x)
    assert (relu["node"], relu["gates_per_input"], relu["spikes_per_input"]) == (
        "choose/then_branch/then_act/amos", 4.0, pytest.approx(spikes.sum() / 50, rel=1e-12))
    assert (sigmoid["gates_per_input"], sigmoid["spikes_per_input"]) == (0.0, 0.0)
    assert report.mean_spikes_per_gate == pytest.approx(spikes.mean(), rel=1e-12)
    assert "mean spikes per gate: " in report.lines()[-1] and report.lines()[-1].endswith(
        "over 2 gate nodes (2 inside If branches or Scan bodies)")


def test_a_per_channel_gate_in_a_scan_body_is_counted_over_every_step(tmp_path: Path) -> None:
    """A Scan over axis 1 of x (N, T, 4): acc <- Elu(acc + x[:, t]), its Elu a per-channel gate on axis 1. The
    counter sees the gate's inputs stacked over the steps (T, N, 4) and merges the steps into the first axis, the
    channels staying on axis 1; its spikes equal the recurrence run by hand step by step with the gate's own
    parameters, and the report leaves the gate out of the synaptic operations, saying so."""
    rng = np.random.default_rng(0)
    init, x = rng.normal(0, 1, (6, 4)).astype(np.float32), rng.normal(0, 1, (6, 5, 4)).astype(np.float32)
    out = _converted(batched_scan_model(), tmp_path, {"init": init, "x": x}, k=8, per_channel=True)
    counter = SpikeCounter(onnx.load(str(out)))
    (gate,) = counter.gates
    params = counter.params[gate.key]
    assert (gate.scans, params.axis) == (1, 1)
    acc, spikes = init, 0
    for t in range(x.shape[1]):
        acc, s = simulate(params, acc + x[:, t])
        spikes += int(s.sum())
    report = amos_onnx.validate(tmp_path / "m.onnx", out, tmp_path / "d.npz")
    (stats,) = report.gates
    assert stats["inside"] == "final body"
    assert stats["gates_per_input"] * 6 == x.size and stats["spikes_per_input"] * 6 == spikes
    data = amos_onnx.write_report(tmp_path / "m.onnx", out, tmp_path / "d.npz", tmp_path / "report")
    assert data["gates"][0]["synaptic_ops_per_input"] is None  # type: ignore[index]
    assert data["totals"]["gates_inside_subgraphs"] == 1  # type: ignore[index]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "1 of these gates are inside If branches or Scan bodies" in text


def test_the_gates_of_a_written_out_lstm_are_counted(tmp_path: Path) -> None:
    """A forward LSTM written out as a Scan: its five gate activations are counted at every step, the Relu before
    it and the Sigmoid after at the top level: 7 gate nodes, the LSTM's five with as many gates per input as its
    hidden state has elements (6 hidden x 3 batch rows of a step)."""
    rng = np.random.default_rng(2)
    out = _converted(recurrent_model("LSTM"), tmp_path, {"x": rng.normal(0, 1, (40, 3, 4)).astype(np.float32)})
    report = amos_onnx.validate(tmp_path / "m.onnx", out, tmp_path / "d.npz")
    inside = [g for g in report.gates if g["inside"] is not None]
    assert len(report.gates) == 7 and len(inside) == 5
    assert all(g["gates_per_input"] == 18.0 and 0 < g["mean_spikes_per_gate"] <= g["k"] for g in inside)
    done = CliRunner().invoke(main, ["report", str(tmp_path / "m.onnx"), str(out), "--data", str(tmp_path / "d.npz"),
                                     "--out", str(tmp_path / "report")])
    assert done.exit_code == 0, done.output
    relu, sigmoid = (gate_params(n).k for n in gate_nodes(onnx.load(str(out))))  # the top-level graph's gates
    assert f"latency {relu + sigmoid} steps (pipelined: one input every {max(relu, sigmoid)} steps; of the top-level " \
           "graph's gates, not the 5 inside If branches or Scan bodies)" in done.output


def test_gates_inside_loop_bodies_are_said_to_be_left_uncounted(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(0, 1, (8, 4)).astype(np.float32)
    out = _converted(loop_model(False), tmp_path, {"x": x})
    report = amos_onnx.validate(tmp_path / "m.onnx", out, tmp_path / "d.npz")
    assert report.gates == [] and report.uncounted_gates == 1
    assert report.lines()[-1] == "not counted: 1 gate nodes inside Loop bodies"
