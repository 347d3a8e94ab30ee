"""Bias correction (--bias-correction): the mean shift the gates leave at each linear layer after them, measured
level by level on calibration samples and taken back through that layer's bias."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import save
from onnx import TensorProto, helper, numpy_helper

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.compensate.bias import mean_shift
from amos_onnx.compensate.targets import find_targets
from amos_onnx.errors import OptionError
from amos_onnx.options import FindOptions
from amos_onnx.pipeline import _find
from amos_onnx.runtime import session

RNG_SEED = 0


class Builder:
    """A seeded model under construction: nodes, initializers, one input x."""

    def __init__(self, shape: list[int | str], seed: int = RNG_SEED) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shape = shape

    def const(self, name: str, shape: tuple[int, ...], scale: float, mean: float = 0.0) -> str:
        value = self.rng.normal(mean, scale, shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> str:
        w = self.const(f"{name}_w", (cout, cin, k, k), 1.6 / np.sqrt(cin * k * k))
        inputs = [x, w] + ([self.const(f"{name}_b", (cout,), 0.1)] if bias else [])
        return self.node("Conv", inputs, name, pads=[k // 2] * 4)

    def model(self, y: str, out_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


def chain() -> onnx.ModelProto:
    """Conv, Relu, MaxPool, Conv, Relu, Conv without bias, Sigmoid, pooling, Gemm."""
    b = Builder(["N", 3, 12, 12])
    h = b.node("Relu", [b.conv("x", "conv1", 3, 8)], "relu1")
    h = b.node("MaxPool", [h], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Relu", [b.conv(h, "conv2", 8, 8)], "relu2")
    h = b.node("Sigmoid", [b.conv(h, "conv3", 8, 8, bias=False)], "sigmoid3")
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h], "gap")], "flat")
    return b.model(b.node("Gemm", [h, b.const("fc_w", (8, 5), 1.0), b.const("fc_b", (5,), 0.1)], "y"), ["N", 5])


def residual() -> onnx.ModelProto:
    """A residual block: Conv, Relu, Conv, Add of the block's input, Relu; then a Conv."""
    b = Builder(["N", 4, 10, 10])
    stem = b.node("Relu", [b.conv("x", "stem", 4, 8)], "stem_relu")
    h = b.node("Relu", [b.conv(stem, "conv_a", 8, 8)], "relu_a")
    h = b.node("Relu", [b.node("Add", [b.conv(h, "conv_b", 8, 8), stem], "sum")], "relu_b")
    return b.model(b.conv(h, "y", 8, 4), ["N", 4, 10, 10])


def squeeze_excitation() -> onnx.ModelProto:
    """Conv, Relu, then a squeeze-excitation gate (pool, 1x1 Conv, Sigmoid) multiplying it, then a Conv."""
    b = Builder(["N", 4, 8, 8])
    h = b.node("Relu", [b.conv("x", "stem", 4, 8)], "stem_relu")
    squeeze = b.node("GlobalAveragePool", [h], "squeeze")
    gate = b.node("Sigmoid", [b.conv(squeeze, "excite", 8, 8, k=1)], "excite_sigmoid")
    return b.model(b.conv(b.node("Mul", [h, gate], "scaled"), "y", 8, 4), ["N", 4, 8, 8])


def concatenation() -> onnx.ModelProto:
    """Two branches (Relu and Tanh of two Convs) concatenated on channels, then a Conv."""
    b = Builder(["N", 4, 8, 8])
    left = b.node("Relu", [b.conv("x", "left", 4, 6)], "left_relu")
    right = b.node("Tanh", [b.conv("x", "right", 4, 6)], "right_tanh")
    return b.model(b.conv(b.node("Concat", [left, right], "joined", axis=1), "y", 12, 4), ["N", 4, 8, 8])


def transformer_block() -> onnx.ModelProto:
    """A token MLP with a residual: MatMul + Add, Tanh, MatMul + Add, Add of the input, then Sigmoid, MatMul + Add."""
    b = Builder(["N", 6, 16])
    h = b.node("Add", [b.node("MatMul", ["x", b.const("w1", (16, 32), 0.35)], "mm1"), b.const("b1", (32,), 0.1)],
               "lin1")
    h = b.node("Tanh", [h], "tanh1")
    h = b.node("Add", [b.node("MatMul", [h, b.const("w2", (32, 16), 0.3)], "mm2"), b.const("b2", (16,), 0.1)],
               "lin2")
    h = b.node("Sigmoid", [b.node("Add", [h, "x"], "res")], "sig")
    out = b.node("Add", [b.node("MatMul", [h, b.const("w3", (16, 8), 0.5)], "mm3"), b.const("b3", (8,), 0.1)], "y")
    return b.model(out, ["N", 6, 8])


def labelled(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its scores' ArgMax, cast to int32, as its only output (a classifier exported with its
    labels)."""
    out = model.graph.output[0].name
    model.graph.node.extend([helper.make_node("ArgMax", [out], ["label64"], axis=1, keepdims=0, name="argmax"),
                             helper.make_node("Cast", ["label64"], ["label"], to=TensorProto.INT32, name="cast")])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT32, ["N"]))
    return model


def detached(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with an int64 input passed through as its only output: no output comes from a floating-point
    tensor."""
    model.graph.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]))
    model.graph.node.append(helper.make_node("Identity", ["ids"], ["ids_out"], name="ids_identity"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["N"]))
    return model


def _data(model: onnx.ModelProto, n: int, seed: int) -> np.ndarray:
    shape = [n] + [int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_targets_are_the_linear_layers_after_the_sites_with_their_bias_and_level() -> None:
    """Through MaxPool to conv2 (level 1), to conv3 with no bias yet (level 2: relu2 is a level-2 site), through
    pooling and Flatten to the Gemm (level 3); conv1 reads the input (no site before it)."""
    model = chain()
    sites, *_ = _find(model, FindOptions())
    got = [(t.node, t.slot, t.axis, t.bias, t.channels, t.level) for t in find_targets(model, sites)]
    assert got == [("conv2", 2, 1, "conv2_b", 8, 1), ("conv3", 2, 1, "", 8, 2), ("y", 2, -1, "fc_b", 5, 3)]
    block = transformer_block()
    sites, *_ = _find(block, FindOptions())
    got = [(t.node, t.slot, t.axis, t.bias, t.level) for t in find_targets(block, sites)]
    assert got == [("lin2", 1, -1, "b2", 1), ("y", 1, -1, "b3", 2)]


def test_mean_shift_keeps_only_what_stands_out_of_the_noise_between_samples() -> None:
    """Channel 0 is shifted by 0.5 with noise 0.1 between samples (kept, to 2e-2), channel 1 is pure noise (left
    at 0). Each sample's mean over its positions is one value: a shift that differs from sample to sample as much
    as it is large is noise however many positions each sample has, and one sample is never enough."""
    rng = np.random.default_rng(0)
    original = rng.normal(0, 1, (40, 3, 5, 2))  # samples, rows, columns, channels (last)
    per_sample = np.stack([0.5 + rng.normal(0, 0.1, 40), rng.normal(0, 0.1, 40)], axis=1)[:, None, None, :]
    spiking = original + per_sample + rng.normal(0, 0.01, original.shape)
    shift = mean_shift([spiking[:20], spiking[20:]], [original[:20], original[20:]], -1)
    assert abs(shift[0] - 0.5) < 2e-2 and shift[1] == 0.0
    assert np.array_equal(mean_shift([spiking[:1]], [original[:1]], -1), np.zeros(2))
    wobbling = original + np.stack([rng.normal(0.05, 0.5, 40), np.zeros(40)], axis=1)[:, None, None, :]
    assert np.array_equal(mean_shift([wobbling], [original], -1), np.zeros(2))


def _mean_error(original: Path, converted: Path, x: np.ndarray) -> tuple[float, float]:
    """The converted model's mean square error against the original's outputs, and the mean over output channels
    (axis 1 of an image, the last axis of tokens) of the absolute mean error: its mean shift."""
    want = session(original, native=False).run(None, {"x": x})[0].astype(np.float64)
    error = session(converted, native=False).run(None, {"x": x})[0] - want
    channel = 1 if error.ndim == 4 else error.ndim - 1
    shift = np.abs(error.mean(axis=tuple(i for i in range(error.ndim) if i != channel)))
    return float(np.mean(error**2)), float(shift.mean())


def convert_both(model: onnx.ModelProto, folder: Path, **compensation: object):  # type: ignore[no-untyped-def]
    """The model saved, converted at K=2 without the focus on 256 seeded calibration samples, plainly and with
    `compensation`: its path and bytes, the plain and compensated outputs, the compensated conversion's report."""
    path = save(model, folder / "model.onnx")
    np.savez(folder / "calib.npz", x=_data(model, 256, 1))
    plain, fixed = folder / "plain.onnx", folder / "fixed.onnx"
    amos_onnx.convert(path, plain, folder / "calib.npz", k=2, focus_kicks=0, reconstruct=False, progress=False)
    report = amos_onnx.convert(path, fixed, folder / "calib.npz", k=2, focus_kicks=0, progress=False, **compensation)
    return path, path.read_bytes(), plain, fixed, report


@pytest.mark.parametrize("build", [chain, residual, squeeze_excitation, concatenation, transformer_block])
def test_bias_correction_takes_back_the_mean_shift_of_the_outputs(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    """At K=2 the gates shift each layer's mean: on held-out inputs, in onnxruntime, the corrected model's
    outputs are shifted from the original's by under 60% of the uncorrected model's shift (2-10x less on these
    graphs) at no more mean square error (1%), with the same ops (only bias initializers differ, each listed in
    the report), the function form and the native op agreeing to the bit, and the input model untouched."""
    model = build()
    path, before, plain, fixed, report = convert_both(model, tmp_path, bias_correction=True)
    x = _data(model, 256, 2)
    (mse, shift), (mse_fixed, shift_fixed) = _mean_error(path, plain, x), _mean_error(path, fixed, x)
    assert shift_fixed < 0.6 * shift, (shift_fixed, shift)
    assert mse_fixed <= 1.01 * mse, (mse_fixed, mse)
    a, b = onnx.load(str(plain)), onnx.load(str(fixed))
    assert _ops(a) == _ops(b)
    values = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    changed = {t.name for t in b.graph.initializer
               if t.name not in values or not np.array_equal(numpy_helper.to_array(t), values[t.name])}
    assert changed and changed == {entry["initializer"] for entry in report.biases}
    assert all(entry["largest"] > 0 and entry["changed"] >= 1 for entry in report.biases)
    assert any(note.startswith("bias correction:") for note in report.notes)
    assert "compensate" in report.stage_seconds
    native = session(fixed, native=True).run(None, {"x": x})[0]
    function = session(fixed, native=False).run(None, {"x": x})[0]
    assert np.array_equal(native, function)
    assert path.read_bytes() == before


def test_a_bias_shared_with_another_layer_gets_its_own_copy(tmp_path: Path) -> None:
    """Two Convs read one bias initializer: the corrected one gets a new initializer, the other keeps the shared
    one as it was."""
    b = Builder(["N", 4, 8, 8])
    w = b.const("w", (4, 4, 3, 3), 0.5)
    bias = b.const("shared_b", (4,), 0.1)
    h = b.node("Relu", [b.node("Conv", ["x", w, bias], "first", pads=[1] * 4)], "relu")
    y = b.node("Conv", [h, w, bias], "y", pads=[1] * 4)
    model = b.model(y, ["N", 4, 8, 8])
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 128, 1))
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0,
                               bias_correction=True, progress=False)
    out = onnx.load(str(tmp_path / "out.onnx"))
    nodes = {n.name: n for n in out.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert [e["initializer"] for e in report.biases] == ["y/amos/bias"]
    assert nodes["first"].input[2] == "shared_b" and nodes["y"].input[2] == "y/amos/bias"
    assert np.array_equal(inits["shared_b"], numpy_helper.to_array(model.graph.initializer[1]))


def test_bias_correction_needs_calibration_data_and_the_cli_flag_turns_it_on(tmp_path: Path) -> None:
    path = save(chain(), tmp_path / "model.onnx")
    with pytest.raises(OptionError, match="--bias-correction needs --calib"):
        amos_onnx.convert(path, tmp_path / "out.onnx", bias_correction=True, progress=False)
    assert not (tmp_path / "out.onnx").exists()
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 64, 1))
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "cli.onnx"), "--calib",
                                       str(tmp_path / "calib.npz"), "--k", "3", "--bias-correction", "-q"])
    assert result.exit_code == 0, result.output
    assert "bias correction: " in result.output
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "none.onnx"), "--bias-correction"])
    assert result.exit_code == 2 and "--bias-correction needs --calib" in result.output


def test_corrections_that_do_not_bring_the_outputs_closer_are_not_written(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The check on the model's outputs, every site spiking: shifts forced far off (every channel's measured
    shift taken as 3) move the outputs away from the original's on the calibration samples, so every bias stays
    as it was, the report lists none and says why."""
    import amos_onnx.compensate.bias as bias

    monkeypatch.setattr(bias, "mean_shift", lambda spiking, original, axis: np.full(spiking[0].shape[axis], 3.0))
    model = chain()
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 64, 1))
    report = amos_onnx.convert(path, tmp_path / "fixed.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0,
                               bias_correction=True, progress=False)
    amos_onnx.convert(path, tmp_path / "plain.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0, reconstruct=False,
                      progress=False)
    assert report.biases == []
    assert any("not closer: every bias kept as it was" in note for note in report.notes)
    fixed, plain = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("fixed", "plain"))
    assert [numpy_helper.to_array(t).tobytes() for t in fixed.graph.initializer] == [
        numpy_helper.to_array(t).tobytes() for t in plain.graph.initializer]


def test_weights_and_biases_held_in_constant_nodes_are_corrected_through_a_new_initializer(tmp_path: Path) -> None:
    """paddle2onnx writes weights and biases as Constant nodes: the layers after the sites are found the same,
    and each corrected bias becomes an initializer of its own that the layer reads; its Constant, which nothing
    reads any more, is removed (the others stay)."""
    model = residual()
    constants = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
                 for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 256, 1))
    amos_onnx.convert(path, tmp_path / "plain.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0, reconstruct=False,
                      progress=False)
    report = amos_onnx.convert(path, tmp_path / "fixed.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0,
                               bias_correction=True, progress=False)
    assert report.biases and all(e["initializer"] == f"{e['node']}/amos/bias" for e in report.biases)
    kept = {n.output[0] for n in onnx.load(str(tmp_path / "fixed.onnx")).graph.node if n.op_type == "Constant"}
    replaced = {model.graph.node[[n.name for n in model.graph.node].index(e["node"])].input[2]
                for e in report.biases}
    assert not kept & replaced and kept == {c.output[0] for c in constants} - replaced
    x = _data(model, 256, 2)
    assert _mean_error(path, tmp_path / "fixed.onnx", x)[1] < 0.6 * _mean_error(path, tmp_path / "plain.onnx", x)[1]


@pytest.mark.parametrize("options", [{"per_channel": True, "k": 2}, {"spike_penalty": 0.01, "k": 2},
                                     {"k": "auto", "target_mse": 0.05}, {"k": 2, "focus_kicks": 20},
                                     {"k": 2, "emit": "inline"}])
def test_bias_correction_works_with_the_other_options(tmp_path: Path, options: dict[str, object]) -> None:
    """With per-channel gates, a spike penalty, automatic K, the focus or the inline form, the corrected model
    is shifted from the original less than the plain one (the squeeze-excitation graph, held-out inputs), and its
    native op and function form (or inline ops) agree to the bit."""
    model = squeeze_excitation()
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 256, 1))
    base = {"focus_kicks": 0, "progress": False, **options}
    amos_onnx.convert(path, tmp_path / "plain.onnx", tmp_path / "calib.npz", reconstruct=False, **base)
    report = amos_onnx.convert(path, tmp_path / "fixed.onnx", tmp_path / "calib.npz", bias_correction=True, **base)
    x = _data(model, 256, 2)
    assert report.biases
    assert _mean_error(path, tmp_path / "fixed.onnx", x)[1] < _mean_error(path, tmp_path / "plain.onnx", x)[1]
    native = session(tmp_path / "fixed.onnx", native=True).run(None, {"x": x})[0]
    assert np.array_equal(native, session(tmp_path / "fixed.onnx", native=False).run(None, {"x": x})[0])


@pytest.mark.parametrize("flags", [["--bias-correction"], ["--reconstruct"], []],
                         ids=["bias", "reconstruct", "default"])
def test_the_report_shows_each_layers_error_with_and_without_the_compensation(tmp_path: Path,
                                                                              flags: list[str]) -> None:
    """convert --report with --bias-correction, --reconstruct or neither (reconstruction is the default) also runs
    the same conversion without its compensation on the data: report.json gives each gate's accumulated error both
    ways and report.md a column for each; the compensated model's last gate is closer to the original's tensor than
    the plain one's."""
    import json

    model = chain()
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 256, 1))
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "out.onnx"), "--calib",
                                       str(tmp_path / "calib.npz"), "--k", "2", "--focus-kicks", "0",
                                       *flags, "--report", str(tmp_path / "report"), "-q"])
    assert result.exit_code == 0, result.output
    gates = json.loads((tmp_path / "report/report.json").read_text())["gates"]
    assert len(gates) == 3 and all(g["layer_rmse"] > 0 and g["layer_rmse_uncorrected"] > 0 for g in gates)
    assert gates[-1]["layer_rmse"] < gates[-1]["layer_rmse_uncorrected"]
    assert "| layer RMSE | without correction |" in (tmp_path / "report/report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "model.onnx", "out.onnx", "report"]
