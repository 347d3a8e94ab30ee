"""Structured starting points for the fitter: binary ladders, two-ladder splits, staircases, segment chains."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from amos_onnx.fit.blocks import solve_weights

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


# Resets of the segment start: a stopped membrane ends far below every threshold, a shifted one in a zone
# ZONE range widths below the range (float32 resolves v there to about 2^-19 of the range width). Not a power
# of 4: the fitter's tail points sit at 4^n range widths beyond the range, and one in the zone made slivers.
STOP = 2.0**100
ZONE = 24.0


def segment_start(func: Func, k: int, lo: float, hi: float, bits: int,
                  samples: np.ndarray | None = None) -> tuple[np.ndarray, ...] | None:
    """One spike picks the input's segment, then a shared rounding ladder of `bits` neurons resolves it.

    A chain of neurons with descending thresholds t_1 > t_2 > ... splits [lo, hi]; the first to fire
    carries f's level on its segment and either stops the gate (a constant segment, where f is nearly flat)
    or shifts the membrane to x - t_j in a zone below the range, where the ladder adds a slope shared by
    every shifted segment. A last neuron just above the zone stops what fired nothing (the bottom segment).
    Segments are denser where f' is far from both 0 and the shared slope (and where samples are dense).
    Inputs that arrive in the zone unshifted, a window as wide as the widest segment ZONE range widths below
    lo, read the ladder there instead of f.
    """
    n_seg = k - bits - 1
    if n_seg < 1 or bits < 1:
        return None
    grid = np.linspace(lo, hi, 4097)
    f = func(grid)
    df = np.gradient(f, grid)
    steep = np.abs(df) >= 0.5 * np.max(np.abs(df))
    slope = float(np.median(df[steep]))
    if slope == 0.0:
        return None
    misfit = np.minimum(np.abs(df - slope), np.abs(df)) ** (2 / 3)
    if samples is not None and samples.size:
        # Where inputs are dense, segments are too: squared error weighted by density p is least with
        # segment density (p f'^2)^(1/3).
        counts, _ = np.histogram(np.clip(samples, lo, hi), bins=64, range=(lo, hi))
        p = np.convolve(counts.astype(np.float64), np.ones(3) / 3, mode="same") + 1e-3 * counts.sum() / 64
        misfit *= np.interp(grid, np.linspace(lo, hi, 129)[1::2], p / p.max()) ** (1 / 3)
    density = misfit + 0.5 * np.mean(misfit)
    mass = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    if not mass[-1] > 0:  # f exactly linear on the range: no segment is better placed than another
        return None
    cuts = np.interp(np.arange(1, n_seg + 1) / (n_seg + 1) * mass[-1], mass, grid)[::-1]
    tops = np.concatenate([[hi], cuts[:-1]])
    mean_slope = (func(tops) - func(cuts)) / (tops - cuts)
    shifted = np.abs(mean_slope - slope) < np.abs(mean_slope)
    if not shifted.any():
        return None
    width = float(np.max((tops - cuts)[shifted]))
    zone = ZONE * (hi - lo) + max(abs(lo), abs(hi))
    steps = width * np.exp2(-np.arange(1, bits + 1, dtype=np.float64))
    T = np.concatenate([cuts, [-zone + width + steps[-1]], -zone + steps - steps[-1] / 2])
    h = np.concatenate([np.where(shifted, cuts + zone, STOP), [STOP], steps])
    x = np.linspace(lo, hi, 8193)
    return T, h, solve_weights(T, h, x, func(x), np.full(x.size, 1.0 / x.size))


def stopped_top(func: Func, start: tuple[np.ndarray, ...], lo: float, hi: float,
                share: float = 0.02) -> tuple[np.ndarray, ...] | None:
    """`start` behind a first neuron that stops every input where f is flat at the top of the range (within
    `share` of f's range of f(hi)) and carries f's level there; the start's last neuron makes room.

    A gate fitted for error alone often codes f like a thermometer: inputs in a flat top fire nearly every
    neuron. One spike can do it instead. None when the flat top is
    narrower than 5% of the range.
    """
    grid = np.linspace(lo, hi, 4097)
    f = func(grid)
    near = np.abs(f - f[-1]) <= share * max(float(np.ptp(f)), 1e-12)
    away = np.flatnonzero(~near)
    a = float(grid[away[-1] + 1]) if away.size else lo
    if hi - a < 0.05 * (hi - lo) or len(start[0]) < 2:
        return None
    T, h, d = (np.asarray(v, np.float64) for v in start)
    top = float(np.mean(f[grid >= a]))
    return (np.concatenate([[a], T[:-1]]), np.concatenate([[STOP], h[:-1]]), np.concatenate([[top], d[:-1]]))


def structured_starts(func: Func, k: int, lo: float, hi: float, relu_like: bool,
                      samples: np.ndarray | None = None) -> list[tuple[np.ndarray, ...]]:
    starts = [binary_start(func, k, lo, hi, relu_like), staircase_start(func, k, lo, hi)]
    if not relu_like:
        starts.append(binary_start(func, k, lo, hi, True))
        if lo < 0 < hi and k >= 4:
            starts.append(split_start(func, k, lo, hi))
    if not relu_like and k >= 6:
        chains = [segment_start(func, k, lo, hi, bits, samples) for bits in sorted({round(0.4 * k), round(0.5 * k)})]
        starts += [c for c in chains if c is not None]
    return starts


