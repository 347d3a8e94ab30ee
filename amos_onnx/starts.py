"""Structured starting points for the fitter: binary ladders, two-ladder splits, staircases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Func = Callable[[np.ndarray], np.ndarray]


def binary_start(func: Func, k: int, lo: float, hi: float, relu_like: bool) -> tuple[np.ndarray, ...]:
    """Binary successive approximation (rounding) over the part of [lo, hi] where f is not flat.

    ReLU-like f start at 0 (nothing fires below). A neuron that always fires carries
    f's value at the bottom when it is not 0, and one firing at the start of the
    ladder carries a jump there (ThresholdedRelu); flat tops saturate for free.
    """
    start = 0.0 if relu_like and lo <= 0 < hi else lo
    grid = np.linspace(start, hi, 4097)
    f = func(grid)
    tol = 1e-9 * max(1.0, float(np.max(np.abs(f))))
    moving = np.flatnonzero(np.abs(np.diff(f)) > tol)
    if moving.size == 0:
        return np.full(k, hi + (hi - lo)), np.zeros(k), np.zeros(k)
    a, b = grid[moving[0]], grid[moving[-1] + 1]
    head: list[tuple[float, float, float]] = []
    base = float(f[0])
    if base != 0.0 and not relu_like:
        head.append((lo - (hi - lo), 0.0, base))
    after = float(f[moving[0] + 1])
    width = b - a
    slope = (float(f[moving[-1] + 1]) - after) / max(b - grid[moving[0] + 1], 1e-12)
    if abs(after - base) > 8 * abs(slope) * (grid[1] - grid[0]) + tol:
        head.append((a, 0.0, after - base))
    n = max(k - len(head), 1)
    steps = width * np.exp2(-np.arange(1, n + 1, dtype=np.float64))
    T = np.array([t for t, _, _ in head] + list(a + steps - width * 2.0**-n / 2))
    h = np.array([r for _, r, _ in head] + list(steps))
    d = np.array([dd for _, _, dd in head] + list(steps * slope))
    return T[:k], h[:k], d[:k]


def split_start(func: Func, k: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
    """Two binary ladders: one over [0, hi] (nothing fires for x <= 0), then one over [lo, 0] with an offset."""
    n_pos = (k + 1) // 2
    T1, h1, d1 = binary_start(func, n_pos, min(lo, -1e-9), hi, True)
    T2, h2, d2 = binary_start(func, k - n_pos, lo, 0.0, False)
    return np.concatenate([T1, T2]), np.concatenate([h1, h2]), np.concatenate([d1, d2])


def staircase_start(func: Func, k: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
    """Thermometer code (no resets): jumps at equal steps of f's total variation."""
    grid = np.linspace(lo, hi, 4097)
    f = func(grid)
    tv = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(f)))])
    n = k - 1 if abs(f[0]) > tv[-1] / (2 * k) else k
    levels = (np.arange(n) + 0.5) / n * max(tv[-1], 1e-12)
    T = np.interp(levels, tv, grid)
    d = np.diff(np.concatenate([[f[0]], np.interp(T, grid, f)]))
    if n < k:
        T = np.concatenate([[lo - (hi - lo)], T])
        d = np.concatenate([[f[0]], d])
    return T, np.zeros(k), d


def structured_starts(func: Func, k: int, lo: float, hi: float, relu_like: bool) -> list[tuple[np.ndarray, ...]]:
    starts = [binary_start(func, k, lo, hi, relu_like), staircase_start(func, k, lo, hi)]
    if not relu_like:
        starts.append(binary_start(func, k, lo, hi, True))
        if lo < 0 < hi and k >= 4:
            starts.append(split_start(func, k, lo, hi))
    return starts


