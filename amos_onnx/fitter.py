"""Find T, h, d of a K-neuron gate for a scalar function (numpy only, deterministic).

The gate's output is piecewise constant in x, so instead of gradients the fitter
uses exact block updates (coordinate descent that never increases the cost):

- threshold and weight of one neuron, others fixed: every sample either skips or
  fires the neuron, so after sorting by membrane value the best split and its
  weight follow from prefix and suffix sums;
- reset of one neuron: a vectorised scan over candidate values;
- all weights at once: a weighted least-squares solve for the fixed spike pattern.

It starts from a few structured initialisations (binary successive approximation
over the range, an equal-variation staircase) and keeps the best.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .neuron import GateParams, simulate

log = logging.getLogger(__name__)

Func = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters with their quality on a dense grid over the fitted range."""

    params: GateParams
    mse: float
    max_error: float
    mean_spikes: float
    lo: float
    hi: float


@dataclass
class _Problem:
    x: np.ndarray  # training inputs, float64
    target: np.ndarray
    w: np.ndarray  # weights summing to 1
    lam: float  # spike penalty per mean spike


def _rest(T: np.ndarray, h: np.ndarray, d: np.ndarray, v: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Output and spike count of neurons start..K-1 from membrane v (any shape)."""
    y = np.zeros_like(v)
    s = np.zeros_like(v)
    for j in range(start, len(T)):
        z = v > T[j]
        y += d[j] * z
        s += z
        v = v - h[j] * z
    return y, s


def _cost(p: _Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray) -> float:
    y, s = _rest(T, h, d, p.x.copy(), 0)
    return float(np.sum(p.w * ((p.target - y) ** 2 + p.lam * s)))


def _update_threshold(p: _Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, t: int) -> None:
    """Exact best (T_t, d_t) with all other parameters fixed."""
    v = p.x.copy()
    yb = np.zeros_like(v)
    sb = np.zeros_like(v)
    for j in range(t):
        z = v > T[j]
        yb += d[j] * z
        sb += z
        v = v - h[j] * z
    r0, s0 = _rest(T, h, d, v.copy(), t + 1)
    r1, s1 = _rest(T, h, d, v - h[t], t + 1)
    order = np.argsort(v, kind="stable")
    vs, w = v[order], p.w[order]
    e0 = (p.target - yb - r0)[order]
    e1 = (p.target - yb - r1)[order]
    pen0 = p.lam * s0[order]
    pen1 = p.lam * (1.0 + s1[order])
    prefix = np.concatenate([[0.0], np.cumsum(w * (e0**2 + pen0))])

    def suffix(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])

    sw, se, see = suffix(w), suffix(w * e1), suffix(w * (e1**2 + pen1))
    with np.errstate(invalid="ignore", divide="ignore"):
        fire_cost = np.where(sw > 0, see - se**2 / np.where(sw > 0, sw, 1.0), 0.0)
    cost = prefix + fire_cost
    n = len(vs)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = vs[1:] > vs[:-1]
    cost[~valid] = np.inf
    i = int(np.argmin(cost))
    span = max(float(vs[-1] - vs[0]), 1.0)
    if i == 0:
        T[t] = min(T[t], vs[0] - span)
    elif i == n:
        T[t] = max(T[t], vs[-1] + span)
    else:
        T[t] = 0.5 * (vs[i - 1] + vs[i])
        # float32 rounding must not move the threshold onto a training point.
        if not vs[i - 1] < np.float32(T[t]) < vs[i]:
            T[t] = vs[i - 1] if np.float32(vs[i - 1]) < np.float32(vs[i]) else T[t]
    d[t] = se[i] / sw[i] if i < n and sw[i] > 0 else 0.0


def _update_reset(p: _Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, t: int, scale: float) -> None:
    """Best h_t among candidates around the current value and on the range's scale."""
    v = p.x.copy()
    yb = np.zeros_like(v)
    sb = np.zeros_like(v)
    for j in range(t):
        z = v > T[j]
        yb += d[j] * z
        sb += z
        v = v - h[j] * z
    z = v > T[t]
    if not z.any():
        return
    factors = np.array([0.0, 0.5, 0.85, 0.95, 1.0, 1.05, 1.15, 2.0])
    extra = scale * np.exp2(-np.arange(0, 12, 2))
    cands = np.unique(np.concatenate([h[t] * factors, extra, -extra[:2]]))
    vf = v[z][None, :] - cands[:, None]
    rf, sf = _rest(T, h, d, vf, t + 1)
    yf = yb[z][None, :] + d[t] + rf
    costs = np.sum(p.w[z][None, :] * ((p.target[z][None, :] - yf) ** 2 + p.lam * sf), axis=1)
    h[t] = cands[int(np.argmin(costs))]


def _spike_matrix(T: np.ndarray, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    v = x.copy()
    cols = []
    for j in range(len(T)):
        z = v > T[j]
        cols.append(z.astype(np.float64))
        v = v - h[j] * z
    return np.stack(cols, axis=1)


def solve_weights(T: np.ndarray, h: np.ndarray, x: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares d for fixed T and h (the spike pattern is then fixed)."""
    Z = _spike_matrix(np.asarray(T, np.float64), np.asarray(h, np.float64), np.asarray(x, np.float64))
    sw = np.sqrt(w)[:, None]
    d, *_ = np.linalg.lstsq(Z * sw, target * sw[:, 0], rcond=None)
    return d


def _descend(p: _Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, scale: float, sweeps: int) -> float:
    best = _cost(p, T, h, d)
    for _ in range(sweeps):
        for t in range(len(T)):
            _update_threshold(p, T, h, d, t)
            if t < len(T) - 1:
                _update_reset(p, T, h, d, t, scale)
                _update_threshold(p, T, h, d, t)
        if p.lam == 0.0:
            d_new = solve_weights(T, h, p.x, p.target, p.w)
            if _cost(p, T, h, d_new) < _cost(p, T, h, d):
                d[:] = d_new
        cost = _cost(p, T, h, d)
        if cost > best * (1.0 - 1e-6):
            best = min(best, cost)
            break
        best = cost
    return best


def _binary_start(func: Func, k: int, lo: float, hi: float, relu_like: bool) -> tuple[np.ndarray, ...]:
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
    slope = (float(f[moving[-1] + 1]) - after) / width
    if abs(after - base) > 8 * abs(slope) * (grid[1] - grid[0]) + tol:
        head.append((a, 0.0, after - base))
    n = max(k - len(head), 1)
    steps = width * np.exp2(-np.arange(1, n + 1, dtype=np.float64))
    T = np.array([t for t, _, _ in head] + list(a + steps - width * 2.0**-n / 2))
    h = np.array([r for _, r, _ in head] + list(steps))
    d = np.array([dd for _, _, dd in head] + list(steps * slope))
    return T[:k], h[:k], d[:k]


def _split_start(func: Func, k: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
    """Two binary ladders: one over [0, hi] (nothing fires for x <= 0), then one over [lo, 0] with an offset."""
    n_pos = (k + 1) // 2
    T1, h1, d1 = _binary_start(func, n_pos, min(lo, -1e-9), hi, True)
    T2, h2, d2 = _binary_start(func, k - n_pos, lo, 0.0, False)
    return np.concatenate([T1, T2]), np.concatenate([h1, h2]), np.concatenate([d1, d2])


def _staircase_start(func: Func, k: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
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


def _starts(func: Func, k: int, lo: float, hi: float, relu_like: bool) -> list[tuple[np.ndarray, ...]]:
    starts = [_binary_start(func, k, lo, hi, relu_like), _staircase_start(func, k, lo, hi)]
    if not relu_like:
        starts.append(_binary_start(func, k, lo, hi, True))
        if lo < 0 < hi and k >= 4:
            starts.append(_split_start(func, k, lo, hi))
    return starts


def _problem(func: Func, lo: float, hi: float, samples: np.ndarray | None, lam: float, seed: int) -> _Problem:
    grid = np.linspace(lo, hi, 8193)
    if samples is None or samples.size == 0:
        x, w = grid, np.full(grid.size, 1.0 / grid.size)
    else:
        rng = np.random.default_rng(seed)
        s = samples.astype(np.float64).ravel()
        s = s[np.isfinite(s)]
        if s.size > 6000:
            s = rng.choice(s, 6000, replace=False)
        # Calibration samples carry 95% of the weight; the range grid keeps a floor in the tails.
        x = np.concatenate([s, grid])
        w = np.concatenate([np.full(s.size, 0.95 / s.size), np.full(grid.size, 0.05 / grid.size)])
    return _Problem(x=x, target=func(x).astype(np.float64), w=w, lam=lam)


def evaluate(params: GateParams, func: Func, lo: float, hi: float, points: int = 200_001) -> tuple[float, float, float]:
    """MSE, max abs error and mean spikes of the float32 gate on a dense uniform grid."""
    grid = np.linspace(lo, hi, points, dtype=np.float32)
    y, s = simulate(params, grid)
    err = y.astype(np.float64) - func(grid.astype(np.float64))
    return float(np.mean(err**2)), float(np.max(np.abs(err))), float(np.mean(s))


def fit(
    func: Func,
    k: int,
    lo: float,
    hi: float,
    samples: np.ndarray | None = None,
    *,
    relu_like: bool = False,
    spike_penalty: float = 0.0,
    sweeps: int = 8,
    seed: int = 0,
) -> FitResult:
    """Fit a K-neuron gate to func on [lo, hi], weighted by samples when given."""
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"fit range must be finite with lo < hi, got [{lo}, {hi}]")
    p = _problem(func, lo, hi, samples, spike_penalty, seed)
    starts = _starts(func, k, lo, hi, relu_like)
    if samples is not None and samples.size:
        # Starts on the range where the data really is, too; the best one wins.
        core_lo, core_hi = np.quantile(samples[np.isfinite(samples)], [0.001, 0.999])
        if core_hi > core_lo and (core_lo > lo or core_hi < hi):
            starts += _starts(func, k, float(core_lo), float(core_hi), relu_like)
    # Every start gets a short descent; the best one gets the full budget.
    ranked = []
    for i, (T, h, d) in enumerate(starts):
        T, h, d = T.astype(np.float64), h.astype(np.float64), d.astype(np.float64)
        if spike_penalty == 0.0:
            d = solve_weights(T, h, p.x, p.target, p.w)
        ranked.append((_descend(p, T, h, d, scale=hi - lo, sweeps=2), i, (T, h, d)))
    T, h, d = min(ranked, key=lambda r: (r[0], r[1]))[2]
    _descend(p, T, h, d, scale=hi - lo, sweeps=sweeps)
    params = GateParams(T, h, d)
    mse, max_err, spikes = evaluate(params, func, lo, hi)
    log.debug("fit K=%d on [%g, %g]: mse %.3g max %.3g spikes %.2f", k, lo, hi, mse, max_err, spikes)
    return FitResult(params, mse, max_err, spikes, lo, hi)
