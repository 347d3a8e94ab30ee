"""The spike penalty spread by measured effect (fit.penalty): where the network passes a gate's error on to its
outputs, a spike costs less."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import save
from onnx import TensorProto, helper, numpy_helper

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.compensate import sequential as sequential_module
from amos_onnx.fit.penalty import WEIGHT_LIMIT, factor, geometric_mean, relative_error, sensitivities, spread_fits
from amos_onnx.fit.site_fit import fit_site
from amos_onnx.fit.sites import _shares, fit_sites, site_penalties
from amos_onnx.options import FitOptions
from amos_onnx.pipeline import fit_plan, plan

K, PENALTY = 6, 0.02


def _loud_and_quiet(tmp_path: Path) -> Path:
    """x (N, 16): Relu of its first 8 columns times 8 ("loud_site"), Relu of its last 8 times 0.25
    ("quiet_site"), concatenated: one output, the same inputs and share of evaluations at both sites, and the loud
    site's error 1024 times the quiet one's in the output's squared error."""
    nodes = [
        helper.make_node("Slice", ["x", "zero", "eight", "one"], ["a"], name="first"),
        helper.make_node("Slice", ["x", "eight", "sixteen", "one"], ["b"], name="last"),
        helper.make_node("Relu", ["a"], ["ra"], name="loud_site"),
        helper.make_node("Relu", ["b"], ["rb"], name="quiet_site"),
        helper.make_node("Mul", ["ra", "eight_f"], ["la"], name="amplify"),
        helper.make_node("Mul", ["rb", "quarter"], ["lb"], name="attenuate"),
        helper.make_node("Concat", ["la", "lb"], ["y"], name="join", axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("zero", 0), ("eight", 8), ("sixteen", 16), ("one", 1))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("eight_f", 8.0), ("quarter", 0.25))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "loud_quiet.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1.0, (512, 16)).astype(np.float32))
    np.savez(tmp_path / "test.npz", x=rng.normal(0, 1.0, (2000, 16)).astype(np.float32))
    return path


def test_factors_are_the_sensitivities_geometric_mean_over_each_within_the_limit() -> None:
    mean = geometric_mean({("a",): 8.0, ("b",): 2.0, ("c",): 0.5})
    assert mean == pytest.approx(2.0)
    assert [factor(2.0, v) for v in (8.0, 2.0, 0.5)] == [0.25, 1.0, 4.0]
    # the mean is over the fits that moved the outputs, the factors within the limit, and a fit whose error moved
    # nothing measured pays the most
    assert geometric_mean({("a",): 1e6, ("b",): 1.0, ("c",): 0.0}) == pytest.approx(1e3)
    assert [factor(1e3, v) for v in (1e6, 1.0, 0.0)] == [1 / WEIGHT_LIMIT, WEIGHT_LIMIT, WEIGHT_LIMIT]
    assert geometric_mean({("a",): 2.0}) is None and geometric_mean({("a",): 2.0, ("b",): 0.0}) is None


def _output_error(model: Path, converted: Path, data: Path) -> float:
    """Mean square of (converted - original) over the output's mean square, in onnxruntime."""
    x = np.load(data)["x"]
    want, got = (ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for m in (model, converted))
    return float(np.mean((got - want) ** 2) / np.mean(want**2))


def test_the_loud_site_pays_less_per_spike_and_the_outputs_move_less(tmp_path: Path) -> None:
    """Two ReLU sites alike in inputs and share, one amplified 8x into the output, the other 0.25x: the loud
    site's measured sensitivity is about 1024 times the quiet one's, so their factors are the limits (1/16 and 16),
    and each fit is fit_site's gate at the penalty times share times factor, to the bit. At --spike-penalty 0.02,
    K=6, against the original in onnxruntime on other inputs, the loud site keeps more spikes and the outputs'
    relative squared error falls (measured: 0.00429 spread by the share alone, 0.00107 by effect, 0.00100 with
    error alone) at 0.712 spikes per gate against 0.660. Spread by the share alone, the same error costs 0.99 spikes
    per gate (penalty 0.002: 0.00112) and a quarter of the penalty 0.784 spikes at 0.00288. On the calibration
    samples the loud site's spikes go from 0.64 to 1.02, the quiet one's from 0.68 to 0.37."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    options = FitOptions(k=K, spike_penalty=PENALTY, penalty_by_effect=True)
    spread, weights = spread_fits(p, options)
    assert weights == {"loud_site": 1 / WEIGHT_LIMIT, "quiet_site": WEIGHT_LIMIT}
    error_only = fit_sites(p.sites, p.reservoirs, FitOptions(k=K))
    by_name = {s.name: s for s in p.sites}
    ratio = (relative_error(by_name["quiet_site"], error_only["quiet_site"], p)
             / relative_error(by_name["loud_site"], error_only["loud_site"], p))
    assert 0.5 < ratio < 2  # alike gates: the factors come from the network, not the fits
    fits = fit_sites(p.sites, p.reservoirs, replace(options, penalty_weights=weights))
    for name in fits:  # measured again with the penalised gates: nothing raised, nothing refitted
        assert all(np.array_equal(getattr(spread[name].params, f), getattr(fits[name].params, f))
                   for f in ("thresholds", "resets", "weights"))
    shares = _shares([(s.name, p.reservoirs[s.input].seen) for s in p.sites])
    for name, site in by_name.items():
        alone = fit_site(site.activation, K, p.reservoirs[site.input],
                         FitOptions(spike_penalty=PENALTY * shares[name] * weights[name]))
        for field in ("thresholds", "resets", "weights"):
            assert np.array_equal(getattr(fits[name].params, field), getattr(alone.params, field))
    shared = fit_sites(p.sites, p.reservoirs, replace(options, penalty_by_effect=False))
    assert fits["loud_site"].mean_spikes > shared["loud_site"].mean_spikes
    assert fits["quiet_site"].mean_spikes < shared["quiet_site"].mean_spikes
    errors, spikes = {}, {}
    for penalty, spread in ((PENALTY, True), (PENALTY, False), (PENALTY / 4, False)):
        out = tmp_path / f"by_effect_{spread}_{penalty}.onnx"
        report = amos_onnx.convert(path, out, tmp_path / "calib.npz", k=K, spike_penalty=penalty,
                                   penalty_by_effect=spread)
        errors[penalty, spread] = _output_error(path, out, tmp_path / "test.npz")
        spikes[penalty, spread] = amos_onnx.validate(path, out, tmp_path / "test.npz").mean_spikes_per_gate
        noted = [n for n in report.notes if n.startswith("spike penalty spread by measured effect")]
        assert noted == ([f"spike penalty spread by measured effect over 2 sites: factor {1 / WEIGHT_LIMIT:.2g} at "
                          f"loud_site (the outputs most sensitive to its error) to {WEIGHT_LIMIT:.2g} at quiet_site"]
                         if spread else [])
    by_effect = errors[PENALTY, True], spikes[PENALTY, True]
    assert by_effect[0] <= 0.0012 and by_effect[0] <= 0.5 * errors[PENALTY, False]
    # spread by the share alone, even a quarter of the penalty leaves more spikes and more error
    assert by_effect[1] <= spikes[PENALTY / 4, False] and by_effect[0] <= 0.5 * errors[PENALTY / 4, False]


def test_without_penalty_by_effect_the_share_alone_spreads_it_and_the_cli_takes_the_flag(tmp_path: Path) -> None:
    """Without --penalty-by-effect (the default) nothing is measured: the file is the share-alone fits'; with it,
    another. A factor that is not a positive number is refused, naming the site."""
    path = _loud_and_quiet(tmp_path)
    runner = CliRunner()
    files = {}
    for flag in ([], ["--penalty-by-effect"]):
        out = tmp_path / f"{len(flag)}.onnx"
        result = runner.invoke(main, ["convert", str(path), str(out), "--calib", str(tmp_path / "calib.npz"), "--k",
                                      str(K), "--spike-penalty", str(PENALTY), *flag, "-q"])
        assert result.exit_code == 0, result.output
        files[bool(flag)] = out.read_bytes()
    p = plan(path, calib=tmp_path / "calib.npz")
    fits, _ = fit_plan(p, FitOptions(k=K, spike_penalty=PENALTY))
    assert p.penalty_weights is None
    amos_onnx.pipeline.write(p, tmp_path / "share.onnx", fits)
    assert (tmp_path / "share.onnx").read_bytes() == files[False] != files[True]
    with pytest.raises(amos_onnx.errors.OptionError, match="factor -1.0 for site loud_site: must be a positive"):
        FitOptions(penalty_weights={"loud_site": -1.0})
    with pytest.raises(amos_onnx.errors.OptionError, match="factor nan for site quiet_site"):
        FitOptions(penalty_weights={"quiet_site": math.nan})


def test_sequential_refits_pay_the_penalty_their_first_fit_paid(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sequential refit's relative penalty is its site's first fit's, share and factor included
    (site_penalties), from the options' factors or the plan's last fit's; without --penalty-by-effect, the share's
    alone."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    seen: dict[str, float] = {}
    real = sequential_module._job

    def record(site, first, spiking, original, options, rng, res=None):  # type: ignore[no-untyped-def]
        seen[site.name] = options.spike_penalty
        return real(site, first, spiking, original, options, rng, res)

    monkeypatch.setattr(sequential_module, "_job", record)
    for spread in (True, False):
        options = FitOptions(k=K, spike_penalty=PENALTY, penalty_by_effect=spread, sequential=True)
        fit_plan(p, options)
        first = site_penalties(p.sites, p.reservoirs, replace(options, penalty_weights=p.penalty_weights or {}))
        assert seen == first and len(seen) == 2
        shares = _shares([(s.name, p.reservoirs[s.input].seen) for s in p.sites])
        factor = {"loud_site": 1 / WEIGHT_LIMIT, "quiet_site": WEIGHT_LIMIT} if spread else {}
        assert seen == pytest.approx({n: PENALTY * shares[n] * factor.get(n, 1.0) for n in seen})
        seen.clear()


def _pooled_and_direct(tmp_path: Path) -> Path:
    """x (N, 72): Relu of its first 64 columns averaged over them ("pooled_site"; output y[:, 0]), Relu of the
    last 8 as they are ("direct_site"; y[:, 1:])."""
    nodes = [
        helper.make_node("Slice", ["x", "zero", "half", "one"], ["a"], name="first"),
        helper.make_node("Slice", ["x", "half", "all", "one"], ["b"], name="last"),
        helper.make_node("Relu", ["a"], ["ra"], name="pooled_site"),
        helper.make_node("ReduceMean", ["ra"], ["m"], name="pool", axes=[1], keepdims=1),
        helper.make_node("Relu", ["b"], ["rb"], name="direct_site"),
        helper.make_node("Concat", ["m", "rb"], ["y"], name="join", axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("zero", 0), ("half", 64), ("all", 72), ("one", 1))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 72])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 9])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "pooled.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1.0, (512, 72)).astype(np.float32))
    np.savez(tmp_path / "test.npz", x=rng.normal(0, 1.0, (2000, 72)).astype(np.float32))
    return path


def test_a_penalised_gate_that_moves_the_outputs_more_than_predicted_is_fitted_again(tmp_path: Path) -> None:
    """Averaged over 64 columns, the pooled site's error-only gate's rounding noise barely moves the output: its
    factor is the limit, 16, and penalised that hard its gate drops small values, a bias the mean passes on (its
    sensitivity measured again: 12.8 times the first). So it is fitted again at that sensitivity's factor
    (measured: 1.96, its spikes per gate 0.18 -> 0.41) and, against the original in onnxruntime on other inputs,
    the pooled output's mean absolute error falls (measured: 0.148 -> 0.017 at --spike-penalty 0.05, K=6)."""
    path = _pooled_and_direct(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    options = FitOptions(k=K, spike_penalty=0.05, penalty_by_effect=True)
    first = sensitivities(p, fit_sites(p.sites, p.reservoirs, FitOptions(k=K)))
    mean = geometric_mean(first)
    assert mean is not None and factor(mean, first["pooled_site",]) == WEIGHT_LIMIT
    once = fit_sites(p.sites, p.reservoirs, replace(options, penalty_weights={"pooled_site": WEIGHT_LIMIT,
                                                                              "direct_site": 1 / WEIGHT_LIMIT}))
    later = sensitivities(p, once)
    assert later["pooled_site",] > 10 * first["pooled_site",]
    fits, weights = spread_fits(p, options)
    assert weights == {"pooled_site": factor(mean, later["pooled_site",]), "direct_site": 1 / WEIGHT_LIMIT}
    assert 1.5 < weights["pooled_site"] < 3
    assert fits["pooled_site"].mean_spikes > 2 * once["pooled_site"].mean_spikes
    for field in ("thresholds", "resets", "weights"):  # the direct site's fit is not made again
        assert np.array_equal(getattr(fits["direct_site"].params, field), getattr(once["direct_site"].params, field))
    x = np.load(tmp_path / "test.npz")["x"]

    def run(model: Path) -> np.ndarray:
        return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    want, pooled_error = run(path), []
    for made in (once, fits):
        amos_onnx.pipeline.write(p, tmp_path / "out.onnx", made)
        pooled_error.append(float(np.mean(np.abs(run(tmp_path / "out.onnx")[:, 0] - want[:, 0]))))
    assert pooled_error[1] <= 0.2 * pooled_error[0] and pooled_error[1] <= 0.02
