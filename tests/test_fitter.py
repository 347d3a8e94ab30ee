"""The first fitter: correct, deterministic, and as good as the foundation needs."""

from __future__ import annotations

import numpy as np

from amos_onnx.fitter import evaluate, fit
from amos_onnx.neuron import preset


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
        from amos_onnx.neuron import simulate

        return float(np.mean((simulate(r.params, x)[0] - np.tanh(x.astype(np.float64))) ** 2))

    assert err(focused) < 0.5 * err(uniform)


def test_spike_penalty_trades_error_for_spikes() -> None:
    plain = fit(sigmoid, 8, -10.0, 10.0)
    sparse = fit(sigmoid, 8, -10.0, 10.0, spike_penalty=1e-3)
    assert sparse.mean_spikes < plain.mean_spikes
