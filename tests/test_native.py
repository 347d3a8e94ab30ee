"""The native AmosGate kernel: bit-identical to the function form, validated attributes, really used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, activation_model, save
from gate_cases import CASES, PRELU_SLOPES
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.gate import GateParams, of_chains, simulate
from amos_onnx.rewrite import emit
from amos_onnx.runtime import native_library, session

pytestmark = pytest.mark.skipif(native_library() is None, reason="native library not built (make ops)")


def gate_model(params: GateParams, shape: list, spikes: bool = False, rank: int | None = None) -> onnx.ModelProto:
    """One AmosGate node (function form, as the converter writes it), optionally with the spike output."""
    rank = rank if rank is not None else len(shape)
    node = emit.gate_node("x", "y", params, rank, "g/amos", "test gate")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if spikes:
        node.output.append("s")
        outputs.append(helper.make_tensor_value_info("s", TensorProto.INT32, None))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs)
    opsets = [helper.make_opsetid("", 17)]
    fn = emit.function_proto(emit.overload_of(params, rank), opsets)
    return helper.make_model(graph, opset_imports=opsets + [helper.make_opsetid("amos", 1)], functions=[fn],
                             ir_version=10)


def both(model: onnx.ModelProto | Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feed = {"x": x}
    return session(model, native=False).run(["y"], feed)[0], session(model, native=True).run(["y"], feed)[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_gate_case_is_bit_identical(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = activation_model(case.op, case.opset, case.attrs, list(case.consts), list(case.shape))
    amos_onnx.convert(save(model, tmp_path / "o.onnx"), tmp_path / "c.onnx")
    x = np.linspace(-12, 12, 4096, dtype=np.float32).reshape(-1, 16)
    function, native = both(tmp_path / "c.onnx", x)
    assert np.array_equal(function, native)


def test_per_channel_prelu_is_bit_identical(tmp_path: Path) -> None:
    model = activation_model("PRelu", 16, consts=[PRELU_SLOPES], shape=["N", 4, 5, 5])
    amos_onnx.convert(save(model, tmp_path / "o.onnx"), tmp_path / "c.onnx")
    x = np.random.default_rng(0).uniform(-10, 10, (3, 4, 5, 5)).astype(np.float32)
    function, native = both(tmp_path / "c.onnx", x)
    assert np.array_equal(function, native)


def test_digits_example_is_bit_identical(tmp_path: Path) -> None:
    amos_onnx.convert(ROOT / "examples/digits/digits_cnn.onnx", tmp_path / "c.onnx",
                      calib=ROOT / "examples/digits/digits_train.npz")
    x = np.load(ROOT / "examples/digits/digits_test.npz")["image"]
    feed = {"image": x}
    a = session(tmp_path / "c.onnx", native=False).run(None, feed)[0]
    b = session(tmp_path / "c.onnx", native=True).run(None, feed)[0]
    assert np.array_equal(a, b)


def random_params(rng: np.random.Generator, k: int, channels: int | None) -> GateParams:
    shape = (k,) if channels is None else (channels, k)
    return GateParams(rng.normal(0, 3, shape), rng.normal(0, 3, shape), rng.normal(0, 2, shape),
                      axis=None if channels is None else 1)


SHAPES = [(0,), (0, 3), (1,), (7,), (5, 3), (2, 3, 17, 1), (1, 3, 64, 129), (4, 3, 1, 1), (1, 3, 0, 5)]


@pytest.mark.parametrize("seed", range(12))
def test_property_random_parameters_and_inputs(seed: int) -> None:
    """Kernel, function form and numpy reference agree bit for bit, including +-inf and NaN."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 65))
    shape = SHAPES[seed % len(SHAPES)]
    channels = 3 if len(shape) >= 2 and shape[1] == 3 and seed % 2 else None
    params = random_params(rng, k, channels)
    x = rng.normal(0, 6, shape).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size >= 4:
        flat[:4] = [np.inf, -np.inf, np.nan, 0.0]
    model = gate_model(params, ["N"] * len(shape) if channels is None else ["N", 3] + ["M"] * (len(shape) - 2))
    function, native = both(model, x)
    reference, _ = simulate(params, x)
    assert function.shape == native.shape == x.shape
    assert np.array_equal(function, native, equal_nan=True)
    assert np.array_equal(native, reference, equal_nan=True)
    if flat.size >= 4:
        out = native.reshape(-1)
        assert out[1] == 0.0 and out[2] == 0.0  # -inf and NaN fire nothing
        assert out[0] == reference.reshape(-1)[0]  # +inf fires every neuron


@pytest.mark.parametrize("seed", range(4))
def test_gates_of_several_chains_agree_bit_for_bit(seed: int) -> None:
    """A gate of 2-4 chains (--chains): kernel, function form and numpy reference agree bit for bit, outputs and
    spike counts, including +-inf and NaN, over blocks of the kernel's size and a ragged tail."""
    rng = np.random.default_rng(50 + seed)
    k, chains = int(rng.integers(1, 65)), int(rng.integers(2, 5))
    params = of_chains([random_params(rng, k, None) for _ in range(chains)])
    x = rng.normal(0, 6, (2, 3000)).astype(np.float32)
    x[0, :4] = [np.inf, -np.inf, np.nan, 0.0]
    y, s = session(gate_model(params, ["N", "M"], spikes=True), native=True).run(["y", "s"], {"x": x})
    function, _ = both(gate_model(params, ["N", "M"]), x)
    reference, spikes = simulate(params, x)
    assert np.array_equal(y, reference, equal_nan=True) and np.array_equal(function, reference, equal_nan=True)
    assert np.array_equal(s, spikes)


@pytest.mark.parametrize("shape, axis", [((4, 9, 1500), 2), ((3, 7, 5), 2), ((2, 3000), 1), ((6, 40, 3), 1),
                                         ((2, 5, 2000), 1)])
def test_per_channel_gates_on_short_runs_agree_bit_for_bit(shape: tuple[int, ...], axis: int) -> None:
    """Channels on the last axis (rows of channels, transposed parameters) and short runs of a channel (several
    runs per task) give the function form's outputs and spikes, and numpy's, bit for bit."""
    rng = np.random.default_rng(sum(shape))
    base = random_params(rng, 7, shape[axis])
    params = GateParams(base.thresholds, base.resets, base.weights, axis=axis)
    x = rng.normal(0, 4, shape).astype(np.float32)
    x.reshape(-1)[::97] = np.inf
    function = session(gate_model(params, list(shape)), native=False).run(["y"], {"x": x})[0]
    y, s = session(gate_model(params, list(shape), spikes=True), native=True).run(["y", "s"], {"x": x})
    ref_y, ref_s = simulate(params, x)
    assert np.array_equal(y, function) and np.array_equal(y, ref_y) and np.array_equal(s, ref_s)


def _dense_head(batch: int | str | None) -> onnx.ModelProto:
    """x -> MatMul + Add -> Relu -> MatMul + Add: dense layers as tf2onnx writes them, which onnxruntime fuses
    into Gemm where it knows the shapes; 400 hidden units, so that the fused sum rounds differently."""
    rng = np.random.default_rng(3)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)
             for name, shape in (("w1", (6, 400)), ("b1", (400,)), ("w2", (400, 3)), ("b2", (3,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _optimised_ops(path: Path, native: bool, tmp_path: Path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"optimised_{native}.onnx")
    session(path, native=native, options=options)
    return [n.op_type for n in onnx.load(str(tmp_path / f"optimised_{native}.onnx")).graph.node]


@pytest.mark.parametrize("batch", ["N", 4, None], ids=["symbolic", "static", "unknown"])
def test_the_layers_after_a_gate_are_optimised_alike_in_both_forms(batch: int | str | None, tmp_path: Path) -> None:
    """The native op tells onnxruntime its outputs' shapes, as the function form's body does: the MatMul + Add
    after the gate is fused into a Gemm in both, and the outputs agree to the bit (before, the native op's
    outputs had no shape, the pair stayed unfused there and the sums rounded differently: 12 of 32 softmax
    values of a fuzzed network, graph_fuzz.py case 82, differed in the last bits)."""
    amos_onnx.convert(save(_dense_head(batch), tmp_path / "o.onnx"), tmp_path / "c.onnx")
    x = np.random.default_rng(4).normal(0, 2, (4 if batch == 4 else 512, 6)).astype(np.float32)
    function, native = session(tmp_path / "c.onnx", native=False), session(tmp_path / "c.onnx", native=True)
    assert np.array_equal(function.run(None, {"x": x})[0], native.run(None, {"x": x})[0])
    fused = _optimised_ops(tmp_path / "c.onnx", True, tmp_path)
    assert fused.count("Gemm") == 2 and "MatMul" not in fused and "Add" not in fused
    assert _optimised_ops(tmp_path / "c.onnx", False, tmp_path).count("Gemm") == 2


@pytest.mark.parametrize("batch", [None, "N"], ids=["unknown", "symbolic"])
def test_a_dimension_the_gate_cannot_name_stays_unknown_after_it(batch: str | None, tmp_path: Path) -> None:
    """x (batch, 4) -> Relu -> Shape -> ConstantOfShape: the native op passes a symbolic dimension on by its name
    and an unknown one under a name of its own, so its size stays unknown, as in the function form. Given as the
    number -1, an unknown dimension made onnxruntime refuse the model (ConstantOfShape of a negative size: Silero
    VAD; merged with a declared shape: PP-OCRv4 det and rec)."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"), helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["z"],
                              value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    amos_onnx.convert(save(model, tmp_path / "o.onnx"), tmp_path / "c.onnx")
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    function = session(tmp_path / "c.onnx", native=False).run(None, {"x": x})
    native = session(tmp_path / "c.onnx", native=True).run(None, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(function, native))
    assert np.array_equal(native[1], np.ones((3, 4), np.float32))


def test_spike_output_counts_spikes() -> None:
    rng = np.random.default_rng(5)
    params = random_params(rng, 10, None)
    x = rng.normal(0, 5, (8, 100)).astype(np.float32)
    y, s = session(gate_model(params, ["N", 100], spikes=True), native=True).run(["y", "s"], {"x": x})
    ref_y, ref_s = simulate(params, x)
    assert np.array_equal(y, ref_y) and np.array_equal(s, ref_s) and s.dtype == np.int32


def test_an_omitted_spike_output_is_not_written(tmp_path: Path) -> None:
    """A node whose optional spikes output is omitted by an empty name (legal ONNX) runs in the native op and
    gives the function form's output; run in a child process, so that a crash fails this test alone."""
    rng = np.random.default_rng(6)
    params = random_params(rng, 6, None)
    model = gate_model(params, ["N", 50], spikes=True)
    model.graph.node[0].output[1] = ""
    del model.graph.output[1]
    onnx.save(model, str(tmp_path / "omitted.onnx"))
    x = rng.normal(0, 3, (4, 50)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, sys; from amos_onnx.runtime import session; "
            f"x = np.load(r'{tmp_path / 'x.npy'}'); "
            f"y = session(r'{tmp_path / 'omitted.onnx'}', native=True).run(['y'], {{'x': x}})[0]; "
            f"np.save(r'{tmp_path / 'y.npy'}', y)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "y.npy"), simulate(params, x)[0])


def bad_gate(**attrs: object) -> onnx.ModelProto:
    node = helper.make_node("AmosGate", ["x"], ["y"], domain="amos", name="bad/amos", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("amos", 1)])


@pytest.mark.parametrize(
    "attrs, message",
    [
        (dict(k=2, thresholds=[1.0, 2.0], resets=[1.0], weights=[1.0, 1.0]), "different lengths"),
        (dict(k=0, thresholds=[1.0], resets=[1.0], weights=[1.0]), "k = 0 is outside 1..64"),
        (dict(k=65, thresholds=[1.0] * 65, resets=[1.0] * 65, weights=[1.0] * 65), "k = 65 is outside 1..64"),
        (dict(k=2, thresholds=[1.0, float("inf")], resets=[1.0, 1.0], weights=[1.0, 1.0]), "must be finite"),
        (dict(k=2, thresholds=[1.0, float("nan")], resets=[1.0, 1.0], weights=[1.0, 1.0]), "must be finite"),
        (dict(k=2, thresholds=[1.0] * 3, resets=[1.0] * 3, weights=[1.0] * 3), "not a multiple of k"),
        (dict(k=1, thresholds=[1.0] * 2, resets=[1.0] * 2, weights=[1.0] * 2), "need an axis"),
        (dict(k=1, thresholds=[1.0]), "missing or malformed attribute"),
        (dict(k=3, thresholds=[1, 2, 3], resets=[1.0] * 3, weights=[1.0] * 3),
         "attribute 'thresholds' must be a non-empty list of floats"),
        (dict(k=2, chains=2, chain_thresholds=[1.0] * 6, chain_resets=[1.0] * 6, chain_weights=[1.0] * 6),
         "chains = 2 of k = 2 neurons need 4 parameters, got 6"),
        (dict(k=2, chains=0, thresholds=[1.0] * 2, resets=[1.0] * 2, weights=[1.0] * 2), "chains must be >= 1"),
        (dict(k=2, chains=2, thresholds=[1.0] * 4, resets=[1.0] * 4, weights=[1.0] * 4),
         "missing or malformed attribute"),
        (dict(k=1, chains=2, axis=0, chain_thresholds=[1.0] * 2, chain_resets=[1.0] * 2, chain_weights=[1.0] * 2),
         "a gate of several chains is shared"),
    ],
)
def test_bad_attributes_fail_session_creation_cleanly(attrs: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        session(bad_gate(**attrs), native=True)


def test_channel_mismatch_is_a_run_error() -> None:
    params = random_params(np.random.default_rng(0), 4, 3)
    sess = session(gate_model(params, ["N", "C"], rank=2), native=True)
    with pytest.raises(Exception, match="input has 5 channels on axis 1, the gate has 3"):
        sess.run(None, {"x": np.zeros((2, 5), np.float32)})


def test_profile_shows_the_kernel_not_the_function(tmp_path: Path) -> None:
    def profiled_ops(native: bool) -> set[str]:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / f"prof_{native}")
        if native:
            options.register_custom_ops_library(str(native_library()))
        model = gate_model(random_params(np.random.default_rng(1), 6, None), ["N", 8])
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.ones((2, 8), np.float32)})
        events = json.loads(Path(sess.end_profiling()).read_text())
        return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}

    assert profiled_ops(True) == {"AmosGate"}
    inlined = profiled_ops(False)
    assert "AmosGate" not in inlined and {"Greater", "Where"} <= inlined


def test_session_reports_which_path_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = gate_model(random_params(np.random.default_rng(2), 3, None), ["N"])
    assert session(model).__dict__["_amos_native"] is True
    monkeypatch.setenv("AMOS_ONNX_NATIVE", "0")
    assert session(model).__dict__["_amos_native"] is False
    with pytest.raises(RuntimeError, match="not built"):
        session(model, native=True)


def _outcome(model: onnx.ModelProto, x: np.ndarray, native: bool) -> np.ndarray | str:
    try:
        return session(model, native=native).run(["y"], {"x": x})[0]
    except Exception as exc:  # onnxruntime's refusal, at session creation or run
        return str(exc).splitlines()[0]


def _hand_built(k_attr: int, n_params: int, overload: emit.Overload, axis: int | None,
                shape: list[int]) -> onnx.ModelProto:
    """An AmosGate node with attributes as given and the function of another overload beside it."""
    rng = np.random.default_rng(k_attr * 100 + n_params)
    attrs: dict = dict(k=k_attr, thresholds=np.sort(rng.normal(0, 1, n_params)).tolist(),
                       resets=rng.uniform(0.1, 1, n_params).tolist(), weights=rng.uniform(0.1, 1, n_params).tolist())
    if axis is not None:
        attrs["axis"] = axis
    node = helper.make_node("AmosGate", ["x"], ["y"], domain="amos", name="g/amos", **attrs)
    node.overload = overload.name
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets + [helper.make_opsetid("amos", 1)],
                             functions=[emit.function_proto(overload, opsets)], ir_version=10)


@pytest.mark.parametrize("k_attr, n_params, overload, axis, shape", [
    (5, 5, emit.Overload(3), None, [4, 6]),  # k says 5, the function is K=3's
    (3, 3, emit.Overload(5), None, [4, 6]),  # k says 3, the function is K=5's
    (3, 2, emit.Overload(3), None, [4, 6]),  # fewer parameters than K
    (3, 18, emit.Overload(3, 0), 0, [6, 6]),  # axis 0 of a rank-2 input leaves 1 axis after it, the function 0
    (3, 18, emit.Overload(3, 1), 1, [6, 6]),  # axis 1 leaves none, the function 1
    (2, 12, emit.Overload(2, 0), 1, [6, 6]),  # consistent: both compute, the same gate
])
def test_a_hand_built_node_never_gets_two_different_answers(k_attr: int, n_params: int, overload: emit.Overload,
                                                            axis: int | None, shape: list[int]) -> None:
    """A node whose attributes disagree with its function overload (k, the parameter count, the axis against the
    overload's axes after the channel): the function form refuses it (its body checks k and the axis), so the
    function form and the native op never both compute, differently; a consistent node computes the same in both."""
    x = np.linspace(-3, 3, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    model = _hand_built(k_attr, n_params, overload, axis, shape)
    function, native = _outcome(model, x, False), _outcome(model, x, True)
    trailing_ok = axis is None or axis == len(shape) - 1 - (overload.trailing or 0)
    consistent = overload.k == k_attr and n_params % k_attr == 0 and trailing_ok
    if consistent:
        assert isinstance(function, np.ndarray) and isinstance(native, np.ndarray)
        assert np.array_equal(function, native)
    else:
        assert isinstance(function, str), "the function form computed a node that does not fit its overload"
