"""Exact block updates of a gate's parameters for the fitter (numpy, float64).

- threshold and weight of one neuron, others fixed: every sample either skips or
  fires the neuron, so after sorting by membrane value the best split and its
  weight follow from prefix and suffix sums;
- reset of one neuron: a vectorised scan over candidate values;
- all weights at once: a weighted least-squares solve for the fixed spike pattern.

Each update never increases the cost (weighted squared error plus a spike penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amos_onnx.fit import kernel as fit_kernel
from amos_onnx.fit.kernel import Split

FLOAT32_ROOM = 4  # ulps of float32 between a threshold's neighbours


@dataclass
class Problem:
    x: np.ndarray  # training inputs, float64
    target: np.ndarray
    w: np.ndarray  # weights summing to 1
    lam: float  # spike penalty per mean spike


def rest(T: np.ndarray, h: np.ndarray, d: np.ndarray, v: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Output and spike count (int8) of neurons start..K-1 from membrane v (any shape; not modified).
    In C when the fitter's library is built (float64 membranes; bit-identical), else this numpy loop."""
    if v.dtype == np.float64 and fit_kernel.available():
        return fit_kernel.rest(T, h, d, v, start)
    y = np.zeros_like(v)
    s = np.zeros(v.shape, np.int8)
    v = v.copy()
    z = np.empty(v.shape, bool)
    tmp = np.empty_like(v)
    for j in range(start, len(T)):  # in place: this loop is most of the fitter's time
        np.greater(v, T[j], out=z)
        np.multiply(z, d[j], out=tmp)
        y += tmp
        s += z
        np.multiply(z, h[j], out=tmp)
        v -= tmp
    return y, s


def _costs(w: np.ndarray, target: np.ndarray, y: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """w * ((target - y)^2 + lam * s), elementwise. Without a penalty the spike term is skipped: adding
    0.0 * s to a square (never -0.0) leaves it as it is, bit for bit, in half the passes over the arrays."""
    square = (target - y) ** 2
    return w * (square + lam * s if lam else square)


def total_cost(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray) -> float:
    """The gate's weighted square error plus spike penalty on the training points. In C when the fitter's library is
    built and the points are float64 (bit-identical), else numpy."""
    if p.x.dtype == np.float64 and fit_kernel.available():
        return fit_kernel.total_cost(p.x, p.target, p.w, p.lam, T, h, d)
    y, s = rest(T, h, d, p.x, 0)
    return float(np.sum(_costs(p.w, p.target, y, s, p.lam)))


def _before(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Membrane arriving at neuron t and the output of neurons 0..t-1, for every training point."""
    y, _ = rest(T[:t], h[:t], d[:t], p.x, 0)
    v = p.x.copy()
    for j in range(t):
        v -= h[j] * (v > T[j])
    return v, y


def split_costs(split: Split, lam: float,
                hint: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cost of every split of one neuron's threshold: (vs, cost, se, sw, order) with vs the membranes v sorted
    (stable: v[order]), and
    for split i (samples i.. fire, n + 1 splits) cost[i] the skipping cost of samples ..i-1 plus the best firing
    cost of samples i.. (their weight d = se[i] / sw[i]); +inf where the gap below sample i is too narrow for
    float32 (kernel.Split names the arrays). In C when the fitter's library is built (bit-identical), else numpy.
    `hint`: the order of an earlier split on the same samples, which the C sort starts from (faster, same result)."""
    if fit_kernel.available():
        return fit_kernel.split_costs(split, lam, FLOAT32_ROOM, hint)
    v, yb, target, w, r0, r1, s0, s1 = split
    order = np.argsort(v, kind="stable")
    vs, w = v[order], w[order]
    e0 = (target - yb - r0)[order]
    e1 = (target - yb - r1)[order]
    pen0 = lam * s0[order]
    pen1 = lam * (1.0 + s1[order])
    prefix = np.concatenate([[0.0], np.cumsum(w * (e0**2 + pen0))])

    def suffix(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])

    sw, se, see = suffix(w), suffix(w * e1), suffix(w * (e1**2 + pen1))
    with np.errstate(invalid="ignore", divide="ignore"):
        fire_cost = np.where(sw > 0, see - se**2 / np.where(sw > 0, sw, 1.0), 0.0)
    cost = prefix + fire_cost
    n = len(vs)
    valid = np.ones(n + 1, dtype=bool)
    # A split needs room for float32: the gate runs in float32, where membranes far from 0 (a segment chain's
    # zone) carry rounding errors of a few ulps; a threshold closer than that to a training point could flip it.
    room = FLOAT32_ROOM * np.spacing(np.maximum(np.abs(vs[1:]), np.abs(vs[:-1])).astype(np.float32))
    valid[1:n] = vs[1:] - vs[:-1] > room
    cost[~valid] = np.inf
    return vs, cost, se, sw, order


def update_threshold(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, t: int,
                     before: tuple[np.ndarray, np.ndarray] | None = None, hint: np.ndarray | None = None) -> np.ndarray:
    """Exact best (T_t, d_t) with all other parameters fixed (`before`: _before's result, when known); the order
    that sorts the membranes arriving at neuron t. `hint`: an order of nearly sorted membranes (split_costs)."""
    v, yb = before if before is not None else _before(p, T, h, d, t)
    (r0, r1), (s0, s1) = rest(T, h, d, np.stack([v, v - h[t]]), t + 1)  # skipping or firing neuron t
    vs, cost, se, sw, order = split_costs(Split(v, yb, p.target, p.w, r0, r1, s0, s1), p.lam, hint)
    n = len(vs)
    i = int(np.argmin(cost))
    current = int(np.searchsorted(vs, T[t], side="right"))  # samples from here on fire now
    if np.isfinite(cost[current]) and cost[i] >= cost[current] - 1e-15 * abs(cost[current]):
        i = current  # ties keep the current split, so parameters do not drift
    if i == current and i in (0, n):
        pass  # fires for all or none: stays where it is
    elif i == 0:
        T[t] = vs[0] - max(float(vs[-1] - vs[0]), 1.0)
    elif i == n:
        T[t] = vs[-1] + max(float(vs[-1] - vs[0]), 1.0)
    else:  # the middle of the gap, also for a kept split: the most room for inputs between training points
        T[t] = 0.5 * (vs[i - 1] + vs[i])
        # float32 rounding must not move the threshold onto a training point.
        if not vs[i - 1] < np.float32(T[t]) < vs[i]:
            T[t] = vs[i - 1] if np.float32(vs[i - 1]) < np.float32(vs[i]) else T[t]
    d[t] = se[i] / sw[i] if i < n and sw[i] > 0 else 0.0
    return order


_RESET_FACTORS = np.array([0.0, 0.5, 0.85, 0.95, 1.05, 1.15, 2.0])  # of the current reset (1.0: candidate 0)
_RESET_STEPS = np.exp2(-np.arange(0, 12, 2))  # of the range's scale


def update_reset(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, t: int, scale: float,
                 before: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
    """Best h_t among candidates around the current value and on the range's scale; whether h_t changed."""
    v, yb = before if before is not None else _before(p, T, h, d, t)
    z = v > T[t]
    if not z.any():
        return False
    extra = scale * _RESET_STEPS
    others = np.concatenate([h[t] * _RESET_FACTORS, extra, -extra[:2]])
    # New resets beyond the range's scale only lose float32 precision; the current one (first) always stays,
    # whatever its size (the segment start's shifts and stops are far larger than the range).
    cands = np.concatenate([[h[t]], others[np.abs(others) <= 4 * scale]])
    vf = v[z][None, :] - cands[:, None]
    rf, sf = rest(T, h, d, vf, t + 1)
    yf = yb[z][None, :] + d[t] + rf
    costs = np.sum(_costs(p.w[z][None, :], p.target[z][None, :], yf, sf, p.lam), axis=1)
    best = int(np.argmin(costs))
    if costs[best] < costs[0] * (1 - 1e-12):  # candidate 0 is the current value: ties keep it
        h[t] = cands[best]
        return True
    return False


def spike_matrix(T: np.ndarray, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Z (len(x) x K): 1.0 where neuron j fires for input x[i], else 0.0. In C when the fitter's library is built
    (bit-identical), else this numpy loop."""
    if fit_kernel.available():
        return fit_kernel.spike_matrix(T, h, x)
    v = x.copy()
    cols = []
    for j in range(len(T)):
        z = v > T[j]
        cols.append(z.astype(np.float64))
        v = v - h[j] * z
    return np.stack(cols, axis=1)


def solve_weights(T: np.ndarray, h: np.ndarray, x: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares d for fixed T and h (the spike pattern is then fixed): the minimum-norm solution of
    the K x K normal equations Z'WZ d = Z'Wt, the same as that of the n x K system (the pseudo-inverse of Z'WZ
    times Z'W is that of W^1/2 Z times W^1/2) at a fraction of its cost."""
    Z = spike_matrix(np.asarray(T, np.float64), np.asarray(h, np.float64), np.asarray(x, np.float64))
    Zw = Z * np.asarray(w, np.float64)[:, None]
    d, *_ = np.linalg.lstsq(Zw.T @ Z, Zw.T @ np.asarray(target, np.float64), rcond=None)
    return d


def sweep(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, scale: float) -> None:
    """One sweep of the descent, in place: each neuron's threshold and weight, then its reset (not the last
    neuron's), and when the reset changed, its threshold and weight again. In C when the fitter's library is built
    and T, h, d are writable contiguous float64 arrays (bit-identical), else this numpy loop."""
    params = (T, h, d)
    if fit_kernel.available() and fit_kernel.sweepable(params):
        fit_kernel.sweep(p.x, p.target, p.w, p.lam, params, scale, FLOAT32_ROOM)
        return
    # Neurons 0..t-1 are final when neuron t is updated: carry their membrane and output forward, and the order
    # that sorts the membrane, which leaves two sorted runs after neuron t (the ones it fired, shifted).
    v, y, order = p.x.copy(), np.zeros_like(p.x), None
    for t in range(len(T)):
        order = update_threshold(p, T, h, d, t, (v, y), order)
        # A reset kept as it was leaves the threshold update as it was: it would place T_t and d_t again.
        if t < len(T) - 1 and update_reset(p, T, h, d, t, scale, (v, y)):
            order = update_threshold(p, T, h, d, t, (v, y), order)
        z = v > T[t]
        y = y + d[t] * z
        v = v - h[t] * z


def descend(p: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, scale: float, sweeps: int) -> float:
    best = total_cost(p, T, h, d)
    for _ in range(sweeps):
        sweep(p, T, h, d, scale)
        cost = total_cost(p, T, h, d)
        if p.lam == 0.0:
            d_new = solve_weights(T, h, p.x, p.target, p.w)
            cost_new = total_cost(p, T, h, d_new)
            if cost_new < cost:
                d[:], cost = d_new, cost_new
        if cost > best * (1.0 - 1e-6):
            best = min(best, cost)
            break
        best = cost
    return best


