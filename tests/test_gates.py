"""Every single-op activation: converted op sequence, checker, agreement with the original, forms identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import activation_model, save
from gate_cases import CASES, PRELU_SLOPES, Case

import amos_onnx
from amos_onnx.gate import simulate
from amos_onnx.report.spikes import gate_params

GRID = np.linspace(-10, 10, 20_000, dtype=np.float32).reshape(-1, 16)


def inline_sequence(k: int) -> list[str]:
    """The op types the inline form emits for one K-neuron gate, step by step."""
    ops = ["Greater", "Where"]
    for _ in range(2, k + 1):
        ops += ["Sub", "Where", "Greater", "Add", "Where"]
    return ops


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    return amos_onnx.session(model, native=False).run(None, {"x": x})[0]


def convert_both(case_model: onnx.ModelProto, tmp: Path) -> tuple[Path, onnx.ModelProto, onnx.ModelProto]:
    src = save(case_model, tmp / "orig.onnx")
    amos_onnx.convert(src, tmp / "function.onnx")
    amos_onnx.convert(src, tmp / "inline.onnx", emit="inline")
    return src, onnx.load(str(tmp / "function.onnx")), onnx.load(str(tmp / "inline.onnx"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_single_op_converts(case: Case, tmp: Path) -> None:
    model = activation_model(case.op, case.opset, case.attrs, list(case.consts), list(case.shape))
    src, fn, inline = convert_both(model, tmp)
    # function form: exactly one gate node in our domain, with its overload's function
    assert [(n.domain, n.op_type) for n in fn.graph.node] == [("amos", "AmosGate")]
    gate = fn.graph.node[0]
    assert gate.name == f"{case.op.lower()}_site/amos"
    assert [(f.name, f.overload) for f in fn.functions] == [("AmosGate", gate.overload)]
    params = gate_params(gate)
    assert gate.overload == f"k{params.k}"
    # inline form: exactly the unrolled sequence, no original op left
    assert [n.op_type for n in inline.graph.node] == inline_sequence(params.k)
    for m in (fn, inline):
        onnx.checker.check_model(m, full_check=True)
        assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["y"]
    y_orig, y_fn, y_inline = run(src, GRID), run(fn, GRID), run(inline, GRID)
    assert np.array_equal(y_fn, y_inline)
    assert np.array_equal(y_fn, simulate(params, GRID)[0])
    err = np.abs(y_fn.astype(np.float64) - y_orig)
    if case.jump is not None:
        err = err[np.abs(GRID - case.jump) > 0.01]
    assert err.max() <= case.tol, f"max error {err.max():.4g} > {case.tol}"
    assert np.abs(y_orig - case.ref(GRID.astype(np.float64))).max() < 1e-5  # the test's reference is right


def test_prelu_per_channel(tmp: Path) -> None:
    model = activation_model("PRelu", 16, consts=[PRELU_SLOPES], shape=["N", 4, 5, 5])
    src, fn, inline = convert_both(model, tmp)
    gate = fn.graph.node[0]
    params = gate_params(gate)
    assert params.axis == 1 and params.thresholds.shape == (4, params.k)
    assert gate.overload == f"k{params.k}c2"
    assert [n.op_type for n in inline.graph.node] == inline_sequence(params.k)
    assert not fn.graph.initializer  # the slope initializer is gone with the PRelu
    rng = np.random.default_rng(0)
    x = rng.uniform(-10, 10, (64, 4, 5, 5)).astype(np.float32)
    y_orig, y_fn, y_inline = run(src, x), run(fn, x), run(inline, x)
    assert np.array_equal(y_fn, y_inline)
    assert np.array_equal(y_fn, simulate(params, x)[0])
    assert np.abs(y_fn - y_orig).max() <= 0.3


def test_clip_with_negative_min_is_skipped_with_reason(tmp: Path) -> None:
    model = activation_model("Clip", 13, consts=[np.array(-1, np.float32), np.array(1, np.float32)])
    report = amos_onnx.inspect(save(model, tmp / "m.onnx"))
    assert [(s.status, s.reason) for s in report.sites] == [
        ("skipped", "Clip min is -1.0, not 0 (only ReLU-like clips convert)")
    ]


def test_constant_node_operands_are_read(tmp: Path) -> None:
    model = activation_model("Clip", 13, consts=[np.array(0, np.float32), np.array(6, np.float32)],
                             as_constant_nodes=True)
    src, fn, _ = convert_both(model, tmp)
    assert [n.op_type for n in fn.graph.node] == ["AmosGate"]  # the Constant nodes went with the Clip
    assert np.abs(run(fn, GRID) - run(src, GRID)).max() <= 0.01


def test_k_option_sets_every_gate(tmp: Path) -> None:
    model = activation_model("Sigmoid", 13)
    src = save(model, tmp / "m.onnx")
    amos_onnx.convert(src, tmp / "k6.onnx", k=6)
    gate = onnx.load(str(tmp / "k6.onnx")).graph.node[0]
    assert gate.overload == "k6" and gate_params(gate).k == 6
