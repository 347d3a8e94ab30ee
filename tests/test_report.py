"""The conversion report: spike totals checked against the native op's own spike output, latency by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.gate import GateParams
from amos_onnx.report import files as report_files
from amos_onnx.report.spikes import with_spike_totals
from amos_onnx.rewrite import emit
from amos_onnx.runtime import native_library, session

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"
TEST = ROOT / "examples/digits/digits_test.npz"


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["convert", str(DIGITS), str(folder / "s.onnx"), "--calib", str(TRAIN),
                                       "--report", str(folder / "calib")])
    assert result.exit_code == 0, result.output
    data = amos_onnx.write_report(DIGITS, folder / "s.onnx", TEST, folder / "test")
    return folder, data


def test_report_files_and_numbers(digits_report: tuple[Path, dict]) -> None:
    folder, data = digits_report
    saved = json.loads((folder / "test/report.json").read_text())
    assert saved["totals"] == json.loads(json.dumps(data["totals"]))
    assert [g["node"] for g in saved["gates"]] == ["/1/Relu/amos", "/3/Relu/amos", "/7/Relu/amos"]
    assert [g["gates_per_input"] for g in saved["gates"]] == [1024, 2048, 64]  # 16x8x8, 32x8x8, 64
    assert saved["totals"]["neurons_per_input"] == (1024 + 2048 + 64) * 10
    assert saved["totals"]["latency_steps"] == 30 and saved["totals"]["pipelined_interval_steps"] == 10
    text = (folder / "test/report.md").read_text()
    assert "| /1/Relu/amos | 10 | 1024 |" in text and "Accuracy: original" in text
    calib = json.loads((folder / "calib/report.json").read_text())
    assert {s["source"] for s in calib["conversion"]["sites"]} == {"calibrated"}


def test_pictures_or_the_hint(digits_report: tuple[Path, dict]) -> None:
    folder, data = digits_report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install amos-onnx[plot]" in (folder / "test/report.md").read_text()
        return
    assert data["pictures"] == ["spikes_per_layer.png", "error_per_layer.png", "gate_000.png", "gate_001.png",
                                "gate_002.png"]
    for name in data["pictures"]:
        assert (folder / "test" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synaptic_operations_and_macs_by_hand(digits_report: tuple[Path, dict]) -> None:
    """Digits CNN: Conv(1->16) Relu Conv(16->32) Relu MaxPool Flatten Gemm(512->64) Relu Gemm(64->10), 8x8 input.
    Fan-outs: a first-Relu spike reaches 32 x 3x3 weights, a second-Relu spike (through MaxPool and Flatten) 64,
    a third 10. MACs: 1024*9 + 2048*144 + 64*512 + 10*64."""
    _, data = digits_report
    assert [g["fan_out"] for g in data["gates"]] == [288, 64, 10]
    for g in data["gates"]:
        assert g["synaptic_ops_per_input"] == pytest.approx(g["spikes_per_input"] * g["fan_out"])
    total = sum(g["synaptic_ops_per_input"] for g in data["gates"])
    assert data["totals"]["synaptic_ops_per_input"] == pytest.approx(total)
    assert data["original"]["macs_per_input"] == 1024 * 9 + 2048 * 144 + 64 * 512 + 10 * 64
    assert data["original"]["weighted_ops_without_shapes"] == 0


def test_layer_error_against_the_original_network(digits_report: tuple[Path, dict]) -> None:
    """Each gate's output against the original's same tensor: recomputed here from both models' tensors."""
    folder, data = digits_report
    images = np.load(TEST)["image"]
    names = [str(g["output"]) for g in data["gates"]]
    exposed = []
    for path in (DIGITS, folder / "s.onnx"):
        model = onnx.load(str(path))
        model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
        exposed.append(session(model).run(names, {"image": images}))
    for g, orig, conv in zip(data["gates"], *exposed):
        err = conv.astype(np.float64) - orig
        assert g["layer_rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-6)
        assert g["layer_max_error"] == pytest.approx(float(np.abs(err).max()), rel=1e-6)
    assert "| synaptic ops/input | layer RMSE | fit | fit MSE |" in (folder / "test/report.md").read_text()


@pytest.mark.skipif(native_library() is None, reason="native library not built (make ops)")
def test_spike_totals_match_the_native_spike_output(digits_report: tuple[Path, dict]) -> None:
    """Independent count: give every gate node the native kernel's optional spike output and sum it."""
    folder, data = digits_report
    model = onnx.load(str(folder / "s.onnx"))
    for node in model.graph.node:
        if node.op_type == "AmosGate":
            node.output.append(f"{node.name}/spikes")
            model.graph.output.append(helper.make_tensor_value_info(f"{node.name}/spikes", TensorProto.INT32, None))
    sess = session(model, native=True)
    images = np.load(TEST)["image"]
    names = [f"{g['node']}/spikes" for g in data["gates"]]
    counts = [int(c.sum()) for c in sess.run(names, {"image": images})]
    for gate, count in zip(data["gates"], counts):
        assert gate["spikes_per_input"] * len(images) == pytest.approx(count, abs=0.5)
    assert data["totals"]["spikes_per_input"] * len(images) == pytest.approx(sum(counts), abs=0.5)


@pytest.mark.skipif(native_library() is None, reason="native library not built (make ops)")
def test_spike_totals_summed_in_the_graph_match_the_report(digits_report: tuple[Path, dict]) -> None:
    """spikes.with_spike_totals (the benchmarks' counter): the same totals, summed by ReduceSum per batch."""
    folder, data = digits_report
    model, probes = with_spike_totals(onnx.load(str(folder / "s.onnx")))
    assert [p[0] for p in probes] == [g["node"] for g in data["gates"]]
    sess = session(model, native=True)
    images = np.load(TEST)["image"]
    totals = {p[0]: [0, 0] for p in probes}
    for start in (0, 100, 250):  # uneven batches: the sums add up
        batch = images[start:{0: 100, 100: 250, 250: len(images)}[start]]
        out = sess.run([n for p in probes for n in p[1:]], {"image": batch})
        for i, p in enumerate(probes):
            totals[p[0]][0] += int(out[2 * i])
            totals[p[0]][1] += int(out[2 * i + 1])
    for gate in data["gates"]:
        spikes, elements = totals[gate["node"]]
        assert elements == round(gate["gates_per_input"] * len(images))
        assert spikes == pytest.approx(gate["spikes_per_input"] * len(images), abs=0.5)


@pytest.mark.parametrize("kind", ["inline", "nothing converted"])
def test_a_report_without_gate_nodes_says_no_spikes_were_counted(kind: str, tmp_path: Path) -> None:
    """Spikes are counted from the AmosGate nodes' own output: a model converted with --emit inline, or one with
    no activation converted (a Sin), has none to count. report exits 0 and says so, in its line and its table
    (it stopped on a TypeError formatting None: 23 of graph_fuzz.py's 400 cases)."""
    if kind == "inline":
        source, data, extra = DIGITS, TEST, ["--calib", str(TRAIN), "--emit", "inline"]
    else:
        graph = helper.make_graph([helper.make_node("Sin", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
        source = tmp_path / "sin.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
        data = tmp_path / "x.npz"
        np.savez(data, x=np.random.default_rng(0).normal(0, 1, (8, 4)).astype(np.float32))
        extra = []
    runner = CliRunner()
    done = runner.invoke(main, ["convert", str(source), str(tmp_path / "s.onnx"), "-q", *extra])
    assert done.exit_code == 0, done.output
    result = runner.invoke(main, ["report", str(source), str(tmp_path / "s.onnx"), "--data", str(data), "--out",
                                  str(tmp_path / "report"), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("no spikes counted (no AmosGate node") and "latency" in result.output
    assert "| mean spikes per gate | not counted (no AmosGate node) |" in (tmp_path / "report/report.md").read_text()


def test_latency_is_the_deepest_path_of_gates() -> None:
    """x -> g1(K=3) -> g2(K=5) -> Add <- g3(K=4) <- x; then g4(K=2): deepest path 3 + 5 + 2 = 10."""
    def gate(x: str, y: str, k: int) -> onnx.NodeProto:
        p = GateParams(np.zeros(k), np.zeros(k), np.zeros(k))
        return emit.gate_node(x, y, p, 2, f"g{y}", "")

    nodes = [gate("x", "a", 3), gate("a", "b", 5), gate("x", "c", 4), helper.make_node("Add", ["b", "c"], ["d"]),
             gate("d", "y", 2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("amos", 1)])
    assert report_files.latency(model) == {"latency_steps": 10, "pipelined_interval_steps": 5}
