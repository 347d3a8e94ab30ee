"""The gate reference: semantics, and the published presets bit for bit in float32."""

from __future__ import annotations

import numpy as np
import pytest

from amos_onnx.gate import GateParams, binary_relu_closed_form, preset, simulate

# NEURON.md section 2, copied digit for digit.
SILU_T = [0.05946945, 1.6541206, 1.3066754, 1.3267198, 1.1000695, 1.2308974, 1.1188028, 0.9472501, 0.5447531,
          1.0236325, 0.11921431, -0.12855051, -0.44731247, -2.1383545, 1.0, -4.109145]
SIGMOID_D = [0.37689912, 0.21977554, 0.40271342, 0.17005783, 0.09584032, 0.06293014, 0.04360681, -0.0443096,
             0.01999909, 0.07107325, 0.01502249, 0.01021793]


def naive(params: GateParams, x: float) -> tuple[float, int]:
    """The gate of NEURON.md section 1, one scalar at a time, in float32."""
    v, y, spikes = np.float32(x), np.float32(0), 0
    for t in range(params.k):
        z = v > params.thresholds[t]
        y = np.float32(y + params.weights[t] * np.float32(z))
        v = np.float32(v - params.resets[t] * np.float32(z))
        spikes += int(z)
    return float(y), spikes


def test_simulate_matches_the_scalar_definition() -> None:
    rng = np.random.default_rng(1)
    params = GateParams(rng.normal(size=7), rng.normal(size=7), rng.normal(size=7))
    x = rng.normal(scale=3, size=500).astype(np.float32)
    y, s = simulate(params, x)
    expected = [naive(params, v) for v in x]
    assert np.array_equal(y, np.array([e[0] for e in expected], np.float32))
    assert np.array_equal(s, [e[1] for e in expected])


def _where_form(params: GateParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gate as the function form computes it: Where(z, y + d, y) and Where(z, v - h, v) per neuron."""
    v = np.asarray(x, dtype=np.float32)
    y, spikes = np.zeros(v.shape, np.float32), np.zeros(v.shape, np.int32)
    for t in range(params.k):
        threshold, reset, weight = params.step(t, v.ndim)
        z = v > threshold
        y, spikes = np.where(z, y + weight, y), spikes + z
        v = np.where(z, v - reset, v) if t < params.k - 1 else v
    return y, spikes


def test_simulate_gives_the_where_form_bit_for_bit() -> None:
    """simulate adds weight * spike (a fast path for finite parameters): the same float32 outputs and spikes as
    the Where form, bit for bit, on inputs with NaN, infinities and signed zeros, with infinite or negative-zero
    resets and weights, shared and per channel; its input is left alone."""
    rng = np.random.default_rng(0)
    for k in (1, 2, 4, 10, 16):
        for trial in range(8):
            T, h, d = (rng.normal(0, 1, k).astype(np.float32) for _ in range(3))
            if trial == 1:
                h[0] = np.inf
            if trial == 2:
                d[-1] = -np.inf
            if trial == 3:
                h[:], d[0] = -0.0, -0.0
            x = rng.normal(0, 3, 5001).astype(np.float32)
            x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30]
            kept = x.copy()
            with np.errstate(invalid="ignore"):
                ours, theirs = simulate(GateParams(T, h, d), x), _where_form(GateParams(T, h, d), x)
            assert ours[0].tobytes() == theirs[0].tobytes() and np.array_equal(ours[1], theirs[1]), (k, trial)
            assert kept.tobytes() == x.tobytes()
            channels = GateParams(*(rng.normal(0, 1, (3, k)).astype(np.float32) for _ in range(3)), axis=1)
            xc = rng.normal(0, 3, (5, 3, 7, 7)).astype(np.float32)
            ours, theirs = simulate(channels, xc), _where_form(channels, xc)
            assert ours[0].tobytes() == theirs[0].tobytes() and np.array_equal(ours[1], theirs[1])


def test_strict_threshold_and_reset_after_test() -> None:
    params = GateParams([1.0, 1.0], [5.0, 0.0], [1.0, 10.0])
    y, s = simulate(params, np.array([1.0, 1.5, 7.0], np.float32))
    # 1.0 does not exceed 1.0; 1.5 fires neuron 1, then v = -3.5 < 1; 7.0 fires both (v = 2 > 1).
    assert y.tolist() == [0.0, 1.0, 11.0] and s.tolist() == [0, 1, 2]


def test_last_reset_is_never_used() -> None:
    a = GateParams([0.0, 0.0], [1.0, 0.0], [1.0, 1.0])
    b = GateParams([0.0, 0.0], [1.0, 123.0], [1.0, 1.0])
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    assert np.array_equal(simulate(a, x)[0], simulate(b, x)[0])


def test_per_channel_parameters_apply_along_their_axis() -> None:
    T = np.array([[0.0], [1.0]])
    params = GateParams(T, np.zeros_like(T), np.array([[2.0], [3.0]]), axis=1)
    x = np.full((2, 2, 3), 0.5, np.float32)
    y, _ = simulate(params, x)
    assert np.all(y[:, 0] == 2.0) and np.all(y[:, 1] == 0.0)


def test_relu_preset_is_the_closed_form_bit_for_bit() -> None:
    params = preset("relu-k10")
    assert params.thresholds.tolist() == [25 * 2.0**-t for t in range(1, 11)]
    levels = np.arange(0, 1025, dtype=np.float32) * np.float32(25 / 1024)
    x = np.concatenate([np.linspace(-5, 30, 400_001, dtype=np.float32), levels])
    y, spikes = simulate(params, x)
    y_ref, spikes_ref = binary_relu_closed_form(x, 10, 25.0)
    assert np.array_equal(y, y_ref) and np.array_equal(spikes, spikes_ref)
    assert y.max() == np.float32(25 - 25 / 1024)  # saturates at alpha - delta


def test_smooth_presets_hold_the_published_values() -> None:
    silu, sigmoid = preset("silu-k16"), preset("sigmoid-k12")
    assert silu.k == 16 and sigmoid.k == 12
    assert np.array_equal(silu.thresholds, np.array(SILU_T, np.float32))
    assert np.array_equal(sigmoid.weights, np.array(SIGMOID_D, np.float32))


@pytest.mark.parametrize(
    "name, func, lo, hi, mse, spikes",
    [
        ("silu-k16", lambda x: x / (1 + np.exp(-x)), -10, 10, 3.0e-3, 3.21),
        ("sigmoid-k12", lambda x: 1 / (1 + np.exp(-x)), -10, 10, 1.44e-4, 2.74),
        ("relu-k10", lambda x: np.maximum(x, 0), 0, 25, 2.0e-4, 5.0),
    ],
)
def test_presets_reproduce_the_published_quality(name, func, lo, hi, mse, spikes) -> None:  # type: ignore[no-untyped-def]
    x = np.linspace(lo, hi, 200_001, dtype=np.float32)
    y, s = simulate(preset(name), x)
    measured = float(np.mean((y - func(x.astype(np.float64))) ** 2))
    assert measured == pytest.approx(mse, rel=0.03)
    assert float(s.mean()) == pytest.approx(spikes, abs=0.01)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        GateParams([1.0], [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="K must be"):
        GateParams([], [], [])
