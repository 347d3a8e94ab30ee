"""The focus: each site's effect on the model's outputs, measured with its gate alone in place, and more
local-search moves for the fits that move the outputs most."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import save
from onnx import TensorProto, helper, numpy_helper

from amos_onnx.cli import main
from amos_onnx.fit import focus
from amos_onnx.fit.site_fit import absolute_penalty, site_range
from amos_onnx.fit.sites import fit_sites
from amos_onnx.gate import simulate
from amos_onnx.options import FitOptions
from amos_onnx.pipeline import fit_plan, plan, write
from amos_onnx.rewrite.switches import fix_switches, fixed_values
from amos_onnx.runtime import session


def _loud_and_quiet(tmp_path: Path) -> Path:
    """x (N, 32): Tanh on x[:, :16] scaled by 10 ("loud"), SiLU scaled by 0.1 on x[:, 16:] ("quiet": one
    composite site, x * Sigmoid(x) * 0.1), concatenated into y. Alike inputs, alike gate errors; the loud site's error
    reaches y 10,000 times as strongly in square."""
    def const(name: str, value: list[float] | list[int], dtype: type = np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [
        helper.make_node("Slice", ["x", "zero", "half", "one"], ["a"], name="slice_a"),
        helper.make_node("Tanh", ["a"], ["loud"], name="loud_site"),
        helper.make_node("Mul", ["loud", "ten"], ["loud10"], name="scale_loud"),
        helper.make_node("Slice", ["x", "half", "end", "one"], ["b"], name="slice_b"),
        helper.make_node("Sigmoid", ["b"], ["sig"], name="sigmoid"),
        helper.make_node("Mul", ["b", "sig"], ["silu"], name="silu"),
        helper.make_node("Mul", ["silu", "tenth"], ["quiet01"], name="quiet_site"),
        helper.make_node("Concat", ["loud10", "quiet01"], ["y"], name="concat", axis=1),
    ]
    inits = [const("zero", [0]), const("half", [16]), const("end", [32]), const("one", [1]),
             const("ten", [10.0], np.float32), const("tenth", [0.1], np.float32)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "loud.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(0, 1.5, (600, 32)).astype(np.float32))
    return path


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return session(model, native=False).run(["y"], feed)[0]


def test_the_switched_model_puts_one_sites_gate_in_place_of_its_activation(tmp_path: Path) -> None:
    """focus.switched_model: each site's output becomes If(switch, gate, activation). With every switch off y is
    the original's to the bit; with one on, that site's part of y is the converted model's and the rest the
    original's, both to the bit. The exact ops (the branches': the gate, or the activation kept), the
    composite's nodes kept."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    mixed, switches = focus.switched_model(p.model, p.sites, fits, p.options.emit)
    onnx.checker.check_model(mixed)
    assert [n.op_type for n in mixed.graph.node] == [
        "Slice", "Tanh", "If", "Mul", "Slice", "Sigmoid", "Mul", "Mul", "If", "Concat"]
    for node in (n for n in mixed.graph.node if n.op_type == "If"):
        branches = {a.name: [n.op_type for n in a.g.node] for a in node.attribute}
        assert branches == {"then_branch": ["AmosGate"], "else_branch": ["Identity"]}
    assert set(switches) == {"loud_site", "quiet_site"}
    x = np.load(tmp_path / "calib.npz")["x"][:200]
    original = _run(path, {"x": x})
    write(p, tmp_path / "out.onnx", fits)
    converted = _run(tmp_path / "out.onnx", {"x": x})
    off = {name: np.array(False) for name in switches.values()}
    assert np.array_equal(_run(mixed, {"x": x, **off}), original)
    for site, part, rest in (("loud_site", slice(0, 16), slice(16, 32)), ("quiet_site", slice(16, 32), slice(0, 16))):
        y = _run(mixed, {"x": x, **off, switches[site]: np.array(True)})
        assert np.array_equal(y[:, part], converted[:, part])
        assert np.array_equal(y[:, rest], original[:, rest])


def test_effects_are_the_outputs_mean_square_change_and_the_loud_site_gets_the_focus(tmp_path: Path) -> None:
    """focus.effects on the kept calibration samples is the mean square change of y with one gate in place
    (the converted model's own change, 1e-3 relative); the loud site's is over 1,000 times the quiet one's
    (alike gate errors, 100x the scale), so it alone is chosen."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    assert sum(len(f["x"]) for f in p.feeds) >= focus.KEEP_SAMPLES
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    effect = focus.effects(p, fits)
    x = np.concatenate([f["x"] for f in p.feeds])
    assert effect.samples == len(x)
    original = _run(path, {"x": x})
    write(p, tmp_path / "out.onnx", fits)
    change = np.square(_run(tmp_path / "out.onnx", {"x": x}).astype(np.float64) - original)
    assert effect.by_site["loud_site"] == pytest.approx(change[:, :16].sum() / change.size, rel=1e-3)
    assert effect.by_site["quiet_site"] == pytest.approx(change[:, 16:].sum() / change.size, rel=1e-3)
    assert effect.by_site["loud_site"] > 1000 * effect.by_site["quiet_site"]
    assert focus.chosen(effect, fits) == {"loud_site"}


def test_effects_measured_side_by_side_equal_one_run_at_a_time(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The sites' runs go to onnxruntime one per core on sessions of one thread (parallel.threads_map): the
    same effects, bit for bit, as one run at a time on every core."""
    import amos_onnx.parallel

    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    monkeypatch.setattr(amos_onnx.parallel, "cpus", lambda: 1)
    alone = focus.effects(p, fits)
    monkeypatch.setattr(amos_onnx.parallel, "cpus", lambda: 3)
    assert focus.effects(p, fits) == alone


def test_measuring_sees_at_most_focus_passes_times_the_calibration(tmp_path: Path) -> None:
    """measuring_feeds: the first kept samples that, over sites + 1 runs, stay within FOCUS_PASSES times the
    calibration's samples and FOCUS_BYTES of inputs (whole batches, at least one, unless the batch dimension is
    free: then exactly that many rows, at least one; all without a count). effects measures on exactly those: the
    loud site's effect is the converted model's change on them (1e-3 relative)."""
    feeds = [{"x": np.zeros((10, 32), np.float32)} for _ in range(5)]
    assert focus.measuring_feeds(feeds, 3, None) is feeds
    assert len(focus.measuring_feeds(feeds, 3, 25)) == 2  # 4 * 25 // 4 = 25 samples per run: two batches of 10
    assert len(focus.measuring_feeds(feeds, 3, 1)) == 1  # one batch at least
    assert len(focus.measuring_feeds(feeds, 1, 1000)) == 5
    assert [len(f["x"]) for f in focus.measuring_feeds(feeds, 3, 25, sliceable=True)] == [10, 10, 5]
    assert [len(f["x"]) for f in focus.measuring_feeds(feeds, 3, 1, sliceable=True)] == [1]
    large = [{"x": np.zeros((4, 3, 640, 640), np.float32)} for _ in range(3)]  # 4.9 MB a row
    per_run = focus.FOCUS_BYTES // large[0]["x"][0].nbytes // 10
    assert sum(len(f["x"]) for f in focus.measuring_feeds(large, 9, 10_000, sliceable=True)) == per_run
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    allowed = focus.FOCUS_PASSES * 90 // 3  # 2 measured sites: 3 runs
    effect = focus.effects(p, fits, calibration_samples=90)
    assert effect.samples == allowed < sum(len(f["x"]) for f in p.feeds)  # a free batch dimension: rows
    x = np.concatenate([f["x"] for f in p.feeds])[:effect.samples]
    write(p, tmp_path / "out.onnx", fits)
    change = np.square(_run(tmp_path / "out.onnx", {"x": x}).astype(np.float64) - _run(path, {"x": x}))
    assert effect.by_site["loud_site"] == pytest.approx(change[:, :16].sum() / change.size, rel=1e-3)


def test_fit_plan_refits_the_focused_fit_with_more_moves_and_keeps_the_others(tmp_path: Path) -> None:
    """fit_plan(focus_kicks=40), K=8, spike penalty 0.002: the loud site's fit is made again with 40 moves
    from its first fit, so its penalised cost on its samples never ends above the first's (measured: 0.00510
    with the first pass's 6 moves -> 0.00487); the quiet site keeps its fit."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    first, none = fit_plan(p, FitOptions(k=8, spike_penalty=0.002, focus_kicks=0))
    assert none is None
    fits, effect = fit_plan(p, FitOptions(k=8, spike_penalty=0.002, focus_kicks=40))
    assert effect is not None and effect.focused == {"loud_site"}
    for field in ("thresholds", "resets", "weights"):  # the first pass is deterministic: the same fit
        assert np.array_equal(getattr(fits["quiet_site"].params, field), getattr(first["quiet_site"].params, field))
    site = next(s for s in p.sites if s.name == "loud_site")
    res = p.reservoirs[site.input]
    lo, hi = site_range(site.activation, res)
    lam = absolute_penalty(site.activation, res.values, lo, hi, 0.002)

    def cost(params) -> float:  # type: ignore[no-untyped-def]
        y, s = simulate(params, res.values)
        return float(np.mean((y - np.tanh(res.values.astype(np.float64))) ** 2) + lam * np.mean(s))

    assert cost(fits["loud_site"].params) <= 0.99 * cost(first["loud_site"].params)
    assert not np.array_equal(fits["loud_site"].params.thresholds, first["loud_site"].params.thresholds)


def test_convert_focus_kicks_option_and_report_note(tmp_path: Path) -> None:
    """convert --focus-kicks N: the report says which sites were refitted; 0 turns the focus off; a negative N
    is a one-line error with exit 2 and no output file. Both conversions against the original in onnxruntime on
    the 600 calibration rows, K=8 (measured, focus / none: loud part max 0.61 / 0.58, mean 0.155 / 0.158;
    quiet part max 0.037, mean 0.0045 either way)."""
    path = _loud_and_quiet(tmp_path)
    args = ["convert", str(path), "", "--k", "8", "--calib", str(tmp_path / "calib.npz"), "--quiet"]
    args[2] = str(tmp_path / "focus.onnx")
    result = CliRunner().invoke(main, [*args, "--focus-kicks", "40"])
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("focus:"))
    assert note.startswith("focus: 1 of 2 searched sites refitted with 40 moves") and note.endswith(": loud_site")
    args[2] = str(tmp_path / "plain.onnx")
    result = CliRunner().invoke(main, [*args, "--focus-kicks", "0"])
    assert result.exit_code == 0 and "focus:" not in result.output
    x = np.load(tmp_path / "calib.npz")["x"]
    original = _run(path, {"x": x})
    for out in ("focus.onnx", "plain.onnx"):
        error = np.abs(_run(tmp_path / out, {"x": x}) - original)
        assert error[:, :16].max() <= 0.8 and error[:, :16].mean() <= 0.2
        assert error[:, 16:].max() <= 0.05 and error[:, 16:].mean() <= 0.006
    args[2] = str(tmp_path / "bad.onnx")
    result = CliRunner().invoke(main, [*args, "--focus-kicks", "-1"])
    assert result.exit_code == 2 and not (tmp_path / "bad.onnx").exists()
    assert result.stderr.strip().splitlines()[0] == \
        "amos-onnx: error: --focus-kicks -1: the number of local-search moves must be 0 or more"


def test_a_relu_network_has_nothing_to_focus(tmp_path: Path) -> None:
    """ReLU gates are rounding ladders, fitted without local search: the digits CNN's fits are the first pass's
    and nothing is measured."""
    root = Path(__file__).resolve().parent.parent / "examples/digits"
    p = plan(root / "digits_cnn.onnx", calib=root / "digits_train.npz")
    fits, effect = fit_plan(p, FitOptions(k=4))
    first = fit_sites(p.sites, p.reservoirs, FitOptions(k=4))
    assert p.feeds and all(first[s.name].source == "calibrated" for s in p.sites if s.converts)
    assert not any(focus.searched(s, first.get(s.name)) for s in p.sites)
    assert effect is None
    assert all(np.array_equal(fits[n].params.weights, first[n].params.weights) for n in first)


def test_a_switched_model_with_its_switches_fixed_is_the_original_or_the_converted_to_the_bit(tmp_path: Path) -> None:
    """rewrite.switches.fix_switches: each If on a fixed switch becomes the nodes of the branch it takes, writing
    into the If's output; the nodes no output then needs are left out (an activation whose gate is on, the
    composite's three nodes) and the switches are no longer inputs. Every switch off: the original's y to the
    bit; every one on: the converted model's; one on: each part from its own. The exact ops of each."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    mixed, switches = focus.switched_model(p.model, p.sites, fits, p.options.emit)
    x = np.load(tmp_path / "calib.npz")["x"][:200]
    write(p, tmp_path / "out.onnx", fits)
    original, converted = _run(path, {"x": x}), _run(tmp_path / "out.onnx", {"x": x})
    loud, quiet = switches["loud_site"], switches["quiet_site"]
    cases = {
        (False, False): (["Slice", "Tanh", "Identity", "Mul", "Slice", "Sigmoid", "Mul", "Mul", "Identity", "Concat"],
                         original, original),
        (True, True): (["Slice", "AmosGate", "Mul", "Slice", "AmosGate", "Concat"],
                       converted, converted),
        (True, False): (["Slice", "AmosGate", "Mul", "Slice", "Sigmoid", "Mul", "Mul", "Identity",
                         "Concat"], converted, original),
    }
    for (on_loud, on_quiet), (ops, left, right) in cases.items():
        fixed = fix_switches(mixed, {loud: on_loud, quiet: on_quiet})
        onnx.checker.check_model(fixed)
        assert [n.op_type for n in fixed.graph.node] == ops
        assert [i.name for i in fixed.graph.input] == ["x"]
        y = _run(fixed, {"x": x})
        assert np.array_equal(y[:, :16], left[:, :16]) and np.array_equal(y[:, 16:], right[:, 16:])
    assert fix_switches(mixed, {"not_an_input": True}) is mixed
    assert fixed_values({"x": x, loud: np.array(True), "flag": np.array([True])}) == {loud: True}
