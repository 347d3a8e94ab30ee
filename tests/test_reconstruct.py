"""Weight reconstruction (--reconstruct): each Conv, Gemm and MatMul + Add after the gates refitted by ridge
regression, level by level, on the inputs it gets with the sites before it spiking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import save
from onnx import numpy_helper
from test_compensate import (
    Builder,
    _data,
    _mean_error,
    _ops,
    chain,
    concatenation,
    convert_both,
    detached,
    labelled,
    residual,
    squeeze_excitation,
    transformer_block,
)

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.compensate import reconstruct as reconstruct_module
from amos_onnx.compensate.layers import layers, patches, positions
from amos_onnx.compensate.reconstruct import refit
from amos_onnx.compensate.targets import find_targets
from amos_onnx.errors import OptionError
from amos_onnx.fit.sites import fit_sites
from amos_onnx.options import FindOptions, FitOptions
from amos_onnx.pipeline import _find, compensate, plan
from amos_onnx.rewrite.biases import normal_or_zero, set_constants
from amos_onnx.runtime import session


def grouped() -> onnx.ModelProto:
    """Conv, Relu, then a grouped Conv (2 groups, stride 2, dilation 2, uneven pads), Tanh, a depthwise Conv
    without bias, Relu, a Gemm with transB on the flattened pooled tensor."""
    b = Builder(["N", 4, 11, 11])
    h = b.node("Relu", [b.conv("x", "stem", 4, 8)], "stem_relu")
    w = b.const("grouped_w", (6, 4, 3, 3), 0.4)
    h = b.node("Conv", [h, w, b.const("grouped_b", (6,), 0.1)], "grouped", group=2, strides=[2, 2],
               dilations=[2, 2], pads=[1, 2, 2, 0])
    h = b.node("Tanh", [h], "tanh")
    h = b.node("Relu", [b.node("Conv", [h, b.const("depth_w", (6, 1, 3, 3), 0.5)], "depth", group=6,
                               pads=[1, 1, 1, 1])], "depth_relu")
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h], "gap")], "flat")
    return b.model(b.node("Gemm", [h, b.const("fc_w", (3, 6), 0.8), b.const("fc_b", (3,), 0.1)], "y", transB=1),
                   ["N", 3])


@pytest.mark.parametrize("build", [grouped, transformer_block])
def test_patches_times_the_weights_give_the_layers_output_in_onnxruntime(build) -> None:  # type: ignore[no-untyped-def]
    """Every output position's rows (grouped, strided, dilated, unevenly padded and depthwise Convs; a Gemm with
    transB; MatMul + Add on tokens) times the layer's matrices plus its bias give what onnxruntime computes there,
    to float rounding."""
    model = build()
    sites, *_ = _find(model, FindOptions())
    found = layers(model, find_targets(model, sites))
    assert [(ly.target.node, ly.weight_node) for ly in found] == (
        [("grouped", "grouped"), ("depth", "depth"), ("y", "y")] if build is grouped
        else [("lin2", "mm2"), ("y", "mm3")])
    x = _data(model, 3, 1)
    names = [ly.input for ly in found] + [ly.target.output for ly in found]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names if n != "y"])
    values = dict(zip(names, session(copy, native=False).run(names, {"x": x})))
    for ly in found:
        inputs, want = values[ly.input], values[ly.target.output]
        rows = patches(ly, inputs, np.arange(positions(ly, inputs.shape) * inputs.shape[0]))
        got = np.einsum("grd,god->gro", rows, ly.matrices()) + ly.bias.reshape(ly.matrices().shape[:2])[:, None]
        if ly.conv:  # rows are (sample, y, x) per group: back to (sample, channel, y, x)
            n, _, height, width = want.shape
            got = got.reshape(ly.groups, n, height, width, -1).transpose(1, 0, 4, 2, 3).reshape(want.shape)
        else:
            got = got[0].reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.array_equal(ly.with_matrices(ly.matrices()), ly.weight)


def test_a_refit_undoes_a_known_distortion_and_none_is_made_where_nothing_is_wrong(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Inputs that arrive doubled are undone by halving the weights (to 1e-6 without the ridge); inputs that
    arrive as they should give no refit (its held-out error cannot drop below zero)."""
    model = grouped()
    sites, *_ = _find(model, FindOptions())
    ly = layers(model, find_targets(model, sites))[0]
    rng = np.random.default_rng(0)
    original = [rng.normal(0, 1, (6, 8, 11, 11)), rng.normal(0, 1, (5, 8, 11, 11))]
    monkeypatch.setattr(reconstruct_module, "ALPHA", 0.0)
    done = refit(ly, [2 * x for x in original], original, np.random.default_rng(0))
    assert done is not None and done.ratio < 1e-12
    np.testing.assert_allclose(done.weight, ly.weight / 2, atol=1e-6)
    np.testing.assert_allclose(done.bias, ly.bias, atol=1e-6)
    assert refit(ly, original, original, np.random.default_rng(0)) is None


def test_values_below_the_normal_range_are_written_as_zero() -> None:
    """A refit leaves about 1e-40 where a pruned filter's weights were 0: set_constants writes such values as 0 (a
    subnormal weight slows every product with it), in float32 and float16 alike; normal values and integers are
    written as they are."""
    values = np.array([1e-40, -3e-39, 0.0, 1.5e-38, -2.0, 1e-7, 5e-5])
    assert normal_or_zero(values.astype(np.float32)).tolist() == np.array([0, 0, 0, 1.5e-38, -2, 1e-7, 5e-5],
                                                                          np.float32).tolist()
    half = normal_or_zero(values.astype(np.float16))
    assert half.dtype == np.float16 and half.tolist() == np.array([0, 0, 0, 0, -2, 0, 0], np.float16).tolist()
    assert normal_or_zero(np.array([3, -1])).tolist() == [3, -1]
    model = grouped()
    written = set_constants(model, [("grouped", "grouped", 1, "grouped_w", np.full((6, 4, 3, 3), 1e-40, np.float32))],
                            "weight")
    weight = next(t for t in model.graph.initializer if t.name == written[0])
    assert not numpy_helper.to_array(weight).any()


def _error(original: Path, converted: Path, x: np.ndarray) -> float:
    want = session(original, native=False).run(None, {"x": x})[0].astype(np.float64)
    return float(np.mean((session(converted, native=False).run(None, {"x": x})[0] - want) ** 2))


@pytest.mark.parametrize("build", [chain, residual, squeeze_excitation, concatenation, grouped, transformer_block])
def test_reconstruction_brings_the_outputs_closer_to_the_originals(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    """At K=2, on held-out inputs in onnxruntime, the refitted model's mean square error against the original is
    under 90% of the unrefitted one's (0.68-0.87x on these graphs: a linear layer cannot undo all of a K=2 gate's
    error), with the same ops (only the weight and bias initializers listed in the report differ), the function
    form and the native op agreeing to the bit, and the input model untouched."""
    model = build()
    path, before, plain, fixed, report = convert_both(model, tmp_path, reconstruct=True)
    x = _data(model, 256, 2)
    assert _error(path, fixed, x) < 0.9 * _error(path, plain, x), (_error(path, fixed, x), _error(path, plain, x))
    a, b = onnx.load(str(plain)), onnx.load(str(fixed))
    assert _ops(a) == _ops(b)
    values = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    changed = {t.name for t in b.graph.initializer
               if t.name not in values or not np.array_equal(numpy_helper.to_array(t), values[t.name])}
    listed = {e[key] for e in report.biases for key in ("initializer", "weight_initializer")}
    assert changed and changed <= listed and all(0 < e["held_out_ratio"] < 1 for e in report.biases)
    assert any(note.startswith("weight reconstruction: ") for note in report.notes)
    native = session(fixed, native=True).run(None, {"x": x})[0]
    assert np.array_equal(native, session(fixed, native=False).run(None, {"x": x})[0])
    assert path.read_bytes() == before


def test_a_model_without_a_linear_layer_after_its_sites_says_so(tmp_path: Path) -> None:
    """A Relu followed by a MatMul without a bias: nothing is refitted, the note says why."""
    b = Builder(["N", 6, 16])
    model = b.model(b.node("MatMul", [b.node("Relu", ["x"], "relu"), b.const("w", (16, 8), 0.3)], "y"), ["N", 6, 8])
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 64, 1))
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", k=2, reconstruct=True,
                               progress=False)
    assert report.biases == []
    assert ("weight reconstruction: no Conv, Gemm or MatMul + Add with constant weights follows a converted site"
            in report.notes)


def test_refits_that_do_not_bring_the_outputs_closer_are_not_written(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Refits forced far off (every weight times 3) move the outputs away from the original's: nothing is written,
    the report lists none and says why."""
    done = reconstruct_module.refit
    monkeypatch.setattr(reconstruct_module, "refit", lambda ly, s, o, rng: None if (r := done(ly, s, o, rng)) is None
                        else reconstruct_module.Refit(r.layer, 3 * r.weight, r.bias, r.ratio))
    model = residual()
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 64, 1))
    report = amos_onnx.convert(path, tmp_path / "fixed.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0,
                               reconstruct=True, progress=False)
    amos_onnx.convert(path, tmp_path / "plain.onnx", tmp_path / "calib.npz", k=2, focus_kicks=0, reconstruct=False,
                      progress=False)
    assert report.biases == [] and any("not closer: every weight kept" in note for note in report.notes)
    fixed, plain = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("fixed", "plain"))
    assert [numpy_helper.to_array(t).tobytes() for t in fixed.graph.initializer] == [
        numpy_helper.to_array(t).tobytes() for t in plain.graph.initializer]


def test_reconstruct_needs_calibration_data_stands_alone_and_the_cli_flag_turns_it_on(tmp_path: Path) -> None:
    path = save(chain(), tmp_path / "model.onnx")
    with pytest.raises(OptionError, match="--reconstruct needs --calib"):
        amos_onnx.convert(path, tmp_path / "out.onnx", reconstruct=True, progress=False)
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 64, 1))
    with pytest.raises(OptionError, match="give it or --bias-correction, not both"):
        amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", reconstruct=True,
                          bias_correction=True, progress=False)
    assert not (tmp_path / "out.onnx").exists()
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "cli.onnx"), "--calib",
                                       str(tmp_path / "calib.npz"), "--k", "2", "--reconstruct", "-q"])
    assert result.exit_code == 0, result.output
    assert "weight reconstruction: " in result.output
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "none.onnx"), "--reconstruct"])
    assert result.exit_code == 2 and "--reconstruct needs --calib" in result.output


def test_reconstruction_is_on_by_default_with_calibration_and_each_flag_turns_it_off(tmp_path: Path) -> None:
    """A calibrated conversion refits the layers unless told not to: its file equals --reconstruct's and differs
    from --no-reconstruct's (which equals the data-free form of the option, reconstruct=False, and lists no
    layers); --bias-correction alone replaces it; a data-free conversion runs without it and says nothing of it."""
    model = residual()
    path = save(model, tmp_path / "model.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_data(model, 64, 1))
    runner = CliRunner()
    for name, flags in [("default", []), ("on", ["--reconstruct"]), ("off", ["--no-reconstruct"]),
                        ("bias", ["--bias-correction"])]:
        result = runner.invoke(main, ["convert", str(path), str(tmp_path / f"{name}.onnx"), "--calib", str(calib),
                                      "--k", "2", "--focus-kicks", "0", "-q", *flags])
        assert result.exit_code == 0, result.output
        assert ("weight reconstruction: " in result.output) == (name in ("default", "on")), (name, result.output)
        assert ("bias correction: " in result.output) == (name == "bias"), (name, result.output)
    files = {name: (tmp_path / f"{name}.onnx").read_bytes() for name in ("default", "on", "off", "bias")}
    assert files["default"] == files["on"] and len({files["default"], files["off"], files["bias"]}) == 3
    report = amos_onnx.convert(path, tmp_path / "api.onnx", calib, k=2, focus_kicks=0, reconstruct=False,
                               progress=False)
    assert (tmp_path / "api.onnx").read_bytes() == files["off"] and report.biases == []
    p = plan(path, calib, reconstruct=False)
    with pytest.raises(ValueError, match="ask for no compensation"):  # never a silent choice of one
        compensate(p, fit_sites(p.sites, p.reservoirs, FitOptions(k=2)))
    free = amos_onnx.convert(path, tmp_path / "free.onnx", k=2, progress=False)
    assert free.biases == [] and not any("reconstruction" in note for note in free.notes)
    x = _data(model, 256, 2)
    assert _mean_error(path, tmp_path / "default.onnx", x)[0] < _mean_error(path, tmp_path / "off.onnx", x)[0]


def test_too_few_calibration_samples_refit_nothing_and_say_so(tmp_path: Path) -> None:
    """With 16 calibration samples (fewer than MIN_SAMPLES) every weight stays as it was and the note says why."""
    model = chain()
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 16, 1))
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", k=2, reconstruct=True,
                               progress=False)
    assert report.biases == []
    assert any(note.startswith("weight reconstruction: 16 calibration samples, fewer than the 32") for note in
               report.notes), report.notes


@pytest.mark.parametrize("bound", ["kept", "walk"])
def test_samples_held_back_by_memory_are_named_in_the_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          bound: str) -> None:
    """64 calibration samples, but memory holds fewer than MIN_SAMPLES of them (the samples kept for measuring,
    or the walk's tensors, as for a detector's large images): every weight stays, and the note says how many of
    the 64 were held and by which bound, so that nobody adds calibration data in vain."""
    from amos_onnx.compensate import walk as walk_module
    from amos_onnx.fit import focus

    model = chain()
    path = save(model, tmp_path / "model.onnx")
    x = _data(model, 64, 1)
    feeds = [{"x": x[i:i + 1]} for i in range(64)]  # a sample per batch, as a pipeline's recorded inputs come
    if bound == "kept":
        monkeypatch.setattr(focus, "KEEP_BYTES", 10 * x[:1].nbytes)
    else:
        monkeypatch.setattr(walk_module, "WALK_BYTES", 1)  # the walk trims to one feed
    report = amos_onnx.convert(path, tmp_path / "out.onnx", feeds, k=2, progress=False)
    assert report.biases == []
    note = next(n for n in report.notes if n.startswith("weight reconstruction"))
    held, room = ((10, "of samples kept for measuring") if bound == "kept"
                  else (1, "of this model's tensors its walk holds"))
    assert f"weight reconstruction: {held} of the 64 calibration samples (as many as fit in the " in note, note
    assert room in note, note
    assert "fewer than the 32 a refit needs" in note and note.endswith("every weight kept"), note


def test_a_classifier_exported_with_its_labels_is_compensated_by_its_scores(tmp_path: Path) -> None:
    """A classifier whose only output is its ArgMax cast to int32: weight reconstruction (the default) and bias
    correction judge at the scores the labels come from, so they write the same weights and biases as for the
    scores' model; a model none of whose outputs comes from a floating-point tensor gives them nothing to judge
    by: neither runs, each note says why, and the file is the one written without compensation."""
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 64, 1))
    scores, labels = save(chain(), tmp_path / "scores.onnx"), save(labelled(chain()), tmp_path / "labels.onnx")
    for flags in ({}, {"bias_correction": True}):
        reports = [amos_onnx.convert(path, tmp_path / f"{path.stem}_out.onnx", tmp_path / "calib.npz", k=3,
                                     progress=False, **flags) for path in (scores, labels)]
        assert reports[1].biases and reports[0].biases == reports[1].biases
        written = [onnx.load(tmp_path / f"{name}_out.onnx").graph.initializer for name in ("scores", "labels")]
        assert sorted(t.SerializeToString() for t in written[0]) == sorted(t.SerializeToString() for t in written[1])
    path = save(detached(chain()), tmp_path / "ids.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 64, 1), ids=np.arange(64))
    convert = {"k": 3, "progress": False}
    plain = amos_onnx.convert(path, tmp_path / "plain.onnx", tmp_path / "calib.npz", reconstruct=False, **convert)
    assert not any("reconstruction" in n or "bias correction" in n for n in plain.notes)
    for name, flags, note in [("default", {}, "weight reconstruction: no floating-point output to judge it by"),
                              ("bias", {"bias_correction": True}, "bias correction: no floating-point output to "
                                                                  "judge it by")]:
        report = amos_onnx.convert(path, tmp_path / f"{name}.onnx", tmp_path / "calib.npz", **flags, **convert)
        assert report.biases == [] and any(n.startswith(note) for n in report.notes), report.notes
        assert onnx.load(tmp_path / f"{name}.onnx") == onnx.load(tmp_path / "plain.onnx")
