"""The pre-fitted gate library and `amos-onnx fit`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amos_onnx.cli import main
from amos_onnx.fit import library
from amos_onnx.fit.search import evaluate
from amos_onnx.fit.tails import saturates
from amos_onnx.gate import simulate


def test_every_shipped_gate_is_what_it_claims() -> None:
    """Each library entry's recorded figures are its real figures on the dense grid."""
    assert library.PATH.is_file(), "amos_onnx/fit/library.json is missing: python -m amos_onnx.fit.library"
    data = json.loads(library.PATH.read_text())
    assert data["fitter_version"] == library.FITTER_VERSION
    acts = {a.label: a for a in library._representative_activations()}
    keys = set(data["gates"])
    for act in acts.values():
        for k in library.K_RANGE:
            assert library._key(act.label, act.lo, act.hi, act.relu_like, k) in keys, (act.label, k)
    for label in ("Sigmoid", "SiLU", "Relu"):
        act = acts[label]
        shipped = library.lookup(act, 12)
        assert shipped is not None
        mse, max_err, spikes = evaluate(shipped.params, act.func, act.lo, act.hi)
        assert mse == pytest.approx(shipped.mse, rel=1e-6) and spikes == pytest.approx(shipped.mean_spikes, rel=1e-6)


def test_gates_keep_to_their_function_beyond_the_range() -> None:
    """Every shipped gate, every K: where f saturates beyond the fitted range, the gate's output for any finite
    input out there (out to 1e30) stays within f's range widened by the gate's in-range max error; at the top
    of the range every gate reaches f(hi) within that error."""
    magnitudes = np.logspace(-3, 30, 2000)
    checked = 0
    for act in library._representative_activations():
        below, above = saturates(act.func, act.lo, act.hi)
        grid = np.linspace(act.lo, act.hi, 200_001)
        f = act.func(grid)
        for k in library.K_RANGE:
            shipped = library.lookup(act, k)
            assert shipped is not None
            slack = shipped.max_error * 1.0001 + 1e-6
            top, _ = simulate(shipped.params, np.array([act.hi], np.float32))
            assert top[0] >= f[-1] - slack, (act.label, k)
            outside = np.concatenate([act.lo - magnitudes if below else [], act.hi + magnitudes if above else []])
            if outside.size:
                y, _ = simulate(shipped.params, outside.astype(np.float32))
                assert f.min() - slack <= y.min() and y.max() <= f.max() + slack, (act.label, k, y.min(), y.max())
                checked += 1
    assert checked >= 6 * len(library.K_RANGE)  # Sigmoid, Tanh, Softsign, HardSigmoid (two), SiLU, GELU, ...


def test_no_shipped_gate_glitches_between_grid_points() -> None:
    """Every shipped gate, every K, in float32 on 2^20 points offset from the 200,001-point grid its figures come
    from: no sliver where a neuron fires with a weight fitted elsewhere (Softsign K=10 once had one 1e-5 wide,
    error 2.5, at a segment's edge). The max error stays within 10% of the recorded one (a quantising gate's
    worst point can fall between the recording grid's points)."""
    for act in library._representative_activations():
        x = np.linspace(act.lo, act.hi, 2**20 + 1)[:-1] + (act.hi - act.lo) * 2.0**-21
        x32 = x.astype(np.float32)
        f = act.func(x32.astype(np.float64))
        for k in library.K_RANGE:
            shipped = library.lookup(act, k)
            assert shipped is not None
            y, _ = simulate(shipped.params, x32)
            worst = float(np.max(np.abs(y - f)))
            assert worst <= 1.1 * shipped.max_error + 1e-6, (act.label, k, shipped.max_error, worst)


def test_more_neurons_never_fit_worse() -> None:
    """Growing K from the previous solution: error never rises with K."""
    for act in library._representative_activations():
        mses = [library.lookup(act, k).mse for k in library.K_RANGE]  # type: ignore[union-attr]
        assert all(b <= a * 1.0001 + 1e-12 for a, b in zip(mses, mses[1:])), (act.label, mses)


def test_a_larger_k_never_ships_a_worse_gate() -> None:
    """The library build keeps a larger K's fit when it is at least as good as the smaller K's; otherwise it
    ships the smaller K's gate padded with silent neurons: K neurons, the same outputs and spikes on the range."""
    act = {a.label: a for a in library._representative_activations()}["Sigmoid"]
    k4, k6, k8 = (library.lookup(act, k) for k in (4, 6, 8))
    assert k4 is not None and k6 is not None and k8 is not None
    assert library.no_worse(act, 8, k8, k6) is k8
    padded = library.no_worse(act, 8, k4, k6)  # a K=8 fit as bad as K=4's: K=6's gate is shipped instead
    assert len(padded.params.thresholds) == 8
    x = np.linspace(act.lo, act.hi, 100_001, dtype=np.float32)
    (y6, s6), (y8, s8) = simulate(k6.params, x), simulate(padded.params, x)
    np.testing.assert_array_equal(y8, y6)
    np.testing.assert_array_equal(s8, s6)
    assert (padded.mse, padded.max_error, padded.mean_spikes) == (k6.mse, k6.max_error, k6.mean_spikes)


def test_library_of_another_fitter_version_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "library.json"
    stale.write_text(json.dumps({"fitter_version": -1, "gates": json.loads(library.PATH.read_text())["gates"]}))
    monkeypatch.setattr(library, "PATH", stale)
    library._entries.cache_clear()
    try:
        act = library.named_activations()["Sigmoid"]
        assert library.lookup(act, 12) is None
    finally:
        library._entries.cache_clear()


def test_fit_command_prints_parameters_and_figures(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["fit", "Sigmoid", "--k", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["k"] == 6 and len(data["thresholds"]) == 6 and data["range"] == [-10.0, 10.0]
    from amos_onnx.gate import GateParams

    params = GateParams(data["thresholds"], data["resets"], data["weights"])
    x = np.linspace(-10, 10, 200_001, dtype=np.float32)
    y, s = simulate(params, x)
    mse = float(np.mean((y - 1 / (1 + np.exp(-x.astype(np.float64)))) ** 2))
    assert mse == pytest.approx(data["mse"], rel=1e-6) and float(s.mean()) == pytest.approx(data["mean_spikes"])
    shipped = library.lookup(library.named_activations()["Sigmoid"], 6)  # nothing asked for another: the shipped one
    assert shipped is not None and data["thresholds"] == pytest.approx(shipped.params.thresholds.tolist())
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(0, 1, 2000))
    text = CliRunner().invoke(main, ["fit", "Tanh", "--k", "5", "--samples", str(tmp_path / "s.npy")])
    assert text.exit_code == 0 and "Tanh K=5 on [" in text.stdout


def test_fit_command_with_a_spike_penalty_meets_the_sigmoid_k12_target() -> None:
    """`amos-onnx fit Sigmoid --k 12 --spike-cost 2e-5` warm-starts from the shipped gate (1.8e-5 at 6.4
    spikes): MSE <= 4e-5 at <= 2.74 mean spikes, the fitter issue's target (from scratch the fit ends at a
    segment chain, 6.8e-5 at 1.8)."""
    result = CliRunner().invoke(main, ["fit", "Sigmoid", "--k", "12", "--spike-cost", "2e-5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mse"] <= 4e-5 and data["mean_spikes"] <= 2.74


@pytest.mark.slow  # 400 local-search moves at K=16: tens of seconds on two cores
def test_fit_command_with_a_larger_budget_meets_the_silu_k16_normal_target(tmp_path: Path) -> None:
    """The fitter issue's normal row: SiLU K=16 fitted on 100,000 of 200,001 seeded normal(0, 1.5^2) samples
    and measured on all of them, MSE <= 4e-4 with `--kicks 400` (the default budget, 20 moves, ends above it)."""
    normal = np.random.default_rng(1).normal(0, 1.5, 200_001)
    np.save(tmp_path / "s.npy", normal[:100_000])
    lo, hi = str(normal.min()), str(normal.max())
    args = ["fit", "SiLU", "--k", "16", "--samples", str(tmp_path / "s.npy"), "--range", lo, hi, "--json"]
    result = CliRunner().invoke(main, [*args, "--kicks", "400"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    from amos_onnx.gate import GateParams

    x = normal.astype(np.float32)
    y, s = simulate(GateParams(data["thresholds"], data["resets"], data["weights"]), x)
    silu = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    mse = float(np.mean((y - silu) ** 2))
    assert mse <= 4e-4, mse
    assert data["k"] == 16 and data["range"] == [float(lo), float(hi)] and float(s.mean()) < 4


def test_fit_command_time_budget_stops_the_local_search() -> None:
    """100,000 local-search moves would take most of an hour at K=8; a 0.5 s time budget stops them (the starts, the
    polish and the sliver check still run: seconds), and the gate it returns is still a fit."""
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["fit", "Tanh", "--k", "8", "--kicks", "100000", "--time-budget", "0.5",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 60
    data = json.loads(result.stdout)
    assert data["k"] == 8 and data["mse"] < 1e-3


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "Sigmoid", "--k", "4", "--kicks", "-1"], "--kicks -1: the number of local-search moves must be 0"),
        (["fit", "Sigmoid", "--k", "4", "--time-budget", "0"], "--time-budget 0.0: the time budget must be"),
        (["fit", "Nope", "--k", "4"], "unknown function 'Nope'"),
        (["fit", "Sigmoid", "--k", "0"], "--k 0: K must be between 1 and 64"),
        (["fit", "Sigmoid", "--k", "4", "--range", "3", "1"], "--range 3.0 1.0: LO must be below HI"),
        (["fit", "Sigmoid", "--k", "4", "--samples", "/nonexistent.npy"], "not a readable .npy/.npz file"),
    ],
)
def test_fit_command_bad_input(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
