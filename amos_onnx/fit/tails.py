"""Where f saturates beyond the fitted range: a bounded gate must then stay in f's range for any input."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from amos_onnx.gate import GateParams, simulate

Func = Callable[[np.ndarray], np.ndarray]

TAIL_WEIGHT = 0.02  # share of the loss on points beyond the range, for functions that saturate there
TAIL_STEPS = 2.0 ** np.arange(-4, 64, 2)  # distances beyond the range, in range widths: out to ~1e18 widths
LOWEST = float(np.finfo(np.float32).min)  # threshold of a neuron that fires for every finite input


def saturates(func: Func, lo: float, hi: float) -> tuple[bool, bool]:
    """Whether f flattens below lo and above hi (bounded gates must then stay in range for any input)."""
    width = hi - lo
    with np.errstate(over="ignore"):
        far = func(np.array([lo - 1e6 * width, lo, hi, hi + 1e6 * width]))
    tol = 1e-3 * max(1.0, float(np.max(np.abs(far[1:3]))))
    return bool(abs(far[0] - far[1]) <= tol), bool(abs(far[3] - far[2]) <= tol)


def tail_points(func: Func, lo: float, hi: float) -> np.ndarray:
    """Training points beyond the range on the sides where f saturates."""
    below, above = saturates(func, lo, hi)
    width = hi - lo
    return np.concatenate([lo - width * TAIL_STEPS if below else [], hi + width * TAIL_STEPS if above else []])


def tail_excursion(params: GateParams, func: Func, lo: float, hi: float) -> float:
    """How far the gate leaves f's range (over [lo, hi]) for inputs beyond the range where f saturates."""
    below, above = saturates(func, lo, hi)
    far = np.logspace(-3, 30, 400)  # distances beyond the range, out to 1e30
    outside = np.concatenate([lo - far if below else [], hi + far if above else []])
    if outside.size == 0:
        return 0.0
    f = func(np.linspace(lo, hi, 4097))
    y, _ = simulate(params, outside.astype(np.float32))
    return max(float(f.min() - y.min()), float(y.max() - f.max()), 0.0)


def open_bottom(params: GateParams, func: Func, lo: float, hi: float) -> GateParams:
    """Neurons that fire for every input of the range fire for every finite input below it too, when f
    saturates there (nothing firing far below the range would give 0, not f's lower level)."""
    if not saturates(func, lo, hi)[0]:
        return params
    v = np.linspace(lo, hi, 65537)
    T, h = params.thresholds.astype(np.float64), params.resets.astype(np.float64)
    always = np.zeros(len(T), bool)
    for j in range(len(T)):
        z = v > T[j]
        always[j] = z.all()
        v -= h[j] * z
    if not always.any():
        return params
    T[always] = LOWEST
    return GateParams(T, params.resets, params.weights)
