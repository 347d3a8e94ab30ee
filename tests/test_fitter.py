"""The first fitter: correct, deterministic, and as good as the foundation needs."""

from __future__ import annotations

import numpy as np
import pytest

from amos_onnx.fit.blocks import spike_matrix
from amos_onnx.fit.search import evaluate, fit
from amos_onnx.fit.starts import segment_start, structured_starts
from amos_onnx.gate import GateParams, preset


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_relu_rounds_near_the_quantisation_bound() -> None:
    result = fit(relu, 10, 0.0, 25.0, relu_like=True)
    bound = 25.0**2 * 4.0**-10 / 12  # 4.97e-5: no gate with 2^10 levels does better
    assert result.mse <= 1.03 * bound
    published = evaluate(preset("relu-k10"), relu, 0.0, 25.0)[0]
    assert result.mse < published / 3.5  # rounding instead of truncating


def test_sigmoid_is_near_the_published_gate() -> None:
    result = fit(sigmoid, 12, -10.0, 10.0)
    assert result.mse <= 2.5e-4  # published K=12: 1.44e-4; this first fitter gets 2.3e-4
    assert result.max_error <= 0.06


def test_fits_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    samples = rng.normal(0, 2, 5000)
    a = fit(np.tanh, 8, -6.0, 6.0, samples, seed=1)
    b = fit(np.tanh, 8, -6.0, 6.0, samples, seed=1)
    for name in ("thresholds", "resets", "weights"):
        assert np.array_equal(getattr(a.params, name), getattr(b.params, name))


def test_samples_focus_the_fit_where_the_data_is() -> None:
    rng = np.random.default_rng(4)
    samples = rng.normal(0, 0.5, 20000)
    uniform = fit(np.tanh, 6, -10.0, 10.0)
    focused = fit(np.tanh, 6, -10.0, 10.0, samples)
    x = samples.astype(np.float32)

    def err(r):  # type: ignore[no-untyped-def]
        from amos_onnx.gate import simulate

        return float(np.mean((simulate(r.params, x)[0] - np.tanh(x.astype(np.float64))) ** 2))

    assert err(focused) < 0.5 * err(uniform)


def test_spike_penalty_trades_error_for_spikes() -> None:
    plain = fit(sigmoid, 8, -10.0, 10.0)
    sparse = fit(sigmoid, 8, -10.0, 10.0, spike_penalty=1e-3)
    assert sparse.mean_spikes < plain.mean_spikes


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def test_segment_chain_picks_each_input_s_segment_with_one_spike() -> None:
    """The segment start for SiLU K=16 (6 ladder bits): every input of the range fires exactly one of the chain
    and stop neurons, and the start alone is already better than the published gate (3.0e-3 at 3.21 spikes;
    measured 7.2e-4 at 2.30)."""
    T, h, d = segment_start(silu, 16, -10.0, 10.0, 6)
    x = np.linspace(-10.0, 10.0, 20001)
    chain = spike_matrix(T, h, x)[:, : 16 - 6]
    assert np.array_equal(chain.sum(axis=1), np.ones(x.size))
    mse, _, spikes = evaluate(GateParams(T, h, d), silu, -10.0, 10.0)
    assert mse <= 1e-3 and spikes <= 2.5


def test_silu_k16_beats_the_published_gate_with_fewer_spikes() -> None:
    """The fitter issue's SiLU K=16 row from scratch: MSE <= 6e-4 with mean spikes <= 4.6 (published 3.0e-3 at
    3.21; measured 4.8e-4 at 2.69)."""
    result = fit(silu, 16, -10.0, 10.0)
    assert result.mse <= 6e-4 and result.mean_spikes <= 4.6
    published = evaluate(preset("silu-k16"), silu, -10.0, 10.0)
    assert result.mse < published[0] / 5 and result.mean_spikes < published[2]


def test_a_refit_keeping_its_best_starts_finds_the_same_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibrated refit descends only the starts best as they are (fit's keep_starts): with 4 kept, 4 start
    descents instead of one per start (counted), and on sigmoid K=8 samples the start that wins among all of
    them is among those kept, so the gate is the same one."""
    from amos_onnx.fit import search as fitter

    rng = np.random.default_rng(5)
    samples = rng.normal(0.3, 2.0, 20000)
    calls: list[int] = []
    descend = fitter.descend

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return descend(*args, **kwargs)

    monkeypatch.setattr(fitter, "descend", counted)

    def run(keep: int | None) -> tuple[fitter.FitResult, int]:
        calls.clear()
        result = fit(sigmoid, 8, -8.0, 8.0, samples, kicks=4, keep_starts=keep)
        return result, len(calls)

    every, every_calls = run(None)
    kept, kept_calls = run(4)
    for name in ("thresholds", "resets", "weights"):
        assert np.array_equal(getattr(every.params, name), getattr(kept.params, name))
    # Same gate, so the same search after the starts: the difference is the start descents left out.
    starts = len(structured_starts(sigmoid, 8, *np.quantile(samples, [0.001, 0.999]), False, samples)) + len(
        structured_starts(sigmoid, 8, -8.0, 8.0, False, samples))
    assert starts > 4 and every_calls - kept_calls == starts - 4


def test_a_spike_penalty_stops_the_flat_top_and_meets_the_sigmoid_k12_target() -> None:
    """With a spike penalty the shipped sigmoid K=12 gate (error alone: 1.8e-5 at 6.4 spikes, inputs above 4
    firing most neurons) also competes behind a neuron that stops sigmoid's flat top with one spike: the fit
    meets the fitter issue's target, MSE <= 4e-5 at <= 2.74 mean spikes on 200,001 points (measured 2.6e-5 at
    2.52; published 1.44e-4 at 2.74), and every input from 5 up to 1e6 fires exactly one neuron."""
    from amos_onnx.fit import library
    from amos_onnx.fit.starts import STOP, stopped_top
    from amos_onnx.gate import simulate

    shipped = library.lookup(library.named_activations()["Sigmoid"], 12)
    assert shipped is not None
    start = stopped_top(sigmoid, tuple(np.asarray(a, np.float64) for a in (shipped.params.thresholds,
                                       shipped.params.resets, shipped.params.weights)), -10.0, 10.0)
    assert start is not None and start[1][0] == STOP and 3.5 < start[0][0] < 4.5  # sigmoid within 2% of 1
    assert len(start[0]) == 12 and np.array_equal(start[0][1:], shipped.params.thresholds[:11])
    result = fit(sigmoid, 12, -10.0, 10.0, spike_penalty=2e-5, warm=[shipped.params])
    assert result.mse <= 4e-5 and result.mean_spikes <= 2.74
    _, spikes = simulate(result.params, np.linspace(5.0, 1e6, 10001, dtype=np.float32))
    assert np.all(spikes == 1)
    assert stopped_top(silu, start, -10.0, 10.0) is None  # no flat top: no variant
