"""Gates of several chains (convert --chains): C circuits of K neurons side by side, their outputs added
(gate.GateParams.chains). They fire in the same K time steps, so the gate's latency stays K with C * K neurons.

The range is cut at C - 1 points m_1 < m_2 < ...; chain i is fitted to f's rise over its piece,
f_i(x) = f(clip(x, m_{i-1}, m_i)) - f(m_{i-1}) (the first chain f(min(x, m_1)), the last
f(max(x, m_{C-1})) - f(m_{C-1})), and the pieces add up to f for every x. So each chain spends all its K neurons
on one piece's shape (one chain of K neurons must cover the curve near 0 and the whole range at once). The cuts
are tried at CUT_SHIFTS of the samples' C-quantiles (of the range without samples): each piece gets a quick fit
(the best of its structured starts, descended a little), the weights of all chains are solved together on the fit's
points, and only the cuts whose gate costs least there are fitted in full (a full fit per piece and cut tried made
the chains' fits several times slower, for the same choice at most sites).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from amos_onnx.fit.blocks import Problem, rest, spike_matrix
from amos_onnx.fit.grids import GRID_FLOOR, Grids
from amos_onnx.fit.search import FitResult, evaluate, fit, quick_fit
from amos_onnx.gate import GateParams, of_chains

Func = Callable[[np.ndarray], np.ndarray]

# Cuts at the quantiles (j + shift) / C, j = 1..C-1, for each shift (two chains: the quartiles and the median)
CUT_SHIFTS = (-0.5, 0.0, 0.5)
FIT_POINTS = 8193  # the training set the chains' weights are solved and the cuts compared on
SCREEN_STARTS = 3  # a piece's quick fit descends only this many of its starts (those best as they are)


def pieces(func: Func, cuts: list[float]) -> list[Func]:
    """f's rise over each piece between the cuts: functions that add up to f."""
    edges = [-np.inf, *cuts, np.inf]

    def piece(a: float, b: float) -> Func:
        base = 0.0 if a == -np.inf else float(func(np.array([a]))[0])
        return lambda x: func(np.clip(x, a, b)) - base

    return [piece(a, b) for a, b in zip(edges[:-1], edges[1:])]


def cut_sets(chains: int, lo: float, hi: float, ordered: np.ndarray) -> list[list[float]]:
    """The cuts tried: the C-quantiles shifted by CUT_SHIFTS, of the sorted finite samples or of the range,
    strictly inside the range and increasing (sets that collapse are dropped)."""
    found: list[list[float]] = []
    for shift in CUT_SHIFTS:
        q = (np.arange(1, chains) + shift) / chains
        cuts = [float(v) for v in (np.quantile(ordered, q) if ordered.size else lo + q * (hi - lo))]
        if all(lo < c < hi for c in cuts) and all(a < b for a, b in zip(cuts, cuts[1:])) and cuts not in found:
            found.append(cuts)
    return found or [[float(v) for v in lo + np.arange(1, chains) / chains * (hi - lo)]]


def joint_weights(gates: list[GateParams], p: Problem) -> GateParams:
    """The chains' weights solved together (weighted least squares on p) for their thresholds and resets."""
    Z = np.concatenate([spike_matrix(g.thresholds.astype(np.float64), g.resets.astype(np.float64), p.x)
                        for g in gates], axis=1)
    Zw = Z * p.w[:, None]
    d, *_ = np.linalg.lstsq(Zw.T @ Z, Zw.T @ p.target, rcond=None)
    k = gates[0].k
    return of_chains([GateParams(g.thresholds, g.resets, d[i * k:(i + 1) * k]) for i, g in enumerate(gates)])


def cost(params: GateParams, p: Problem) -> float:
    """The gate's weighted square error plus spike penalty on p (float64 membranes, each chain from x)."""
    y, s = np.zeros_like(p.x), np.zeros(p.x.shape, np.float64)
    for c in range(params.chains):
        chain = params.chain(c)
        yc, sc = rest(chain.thresholds.astype(np.float64), chain.resets.astype(np.float64),
                      chain.weights.astype(np.float64), p.x, 0)
        y, s = y + yc, s + sc
    return float(np.sum(p.w * ((p.target - y) ** 2 + p.lam * s)))


def fit_chains(func: Func, k: int, chains: int, lo: float, hi: float, samples: np.ndarray | None = None, *,
               warm: GateParams | None = None, relu_like: bool = False, spike_penalty: float = 0.0,
               range_weight: float = GRID_FLOOR, **search: Any) -> FitResult:
    """A gate of `chains` chains of K neurons for f on [lo, hi] (weighted by samples when given). The cuts are
    chosen on quick fits of the pieces (search.quick_fit: each cut of cut_sets, weights solved together); at the
    chosen cut each chain is fitted to its piece (search.fit, with `search`'s keywords: kicks, seed, keep_starts),
    warm-started from its quick fit and from the same chain of `warm` (a gate of as many chains: an earlier fit of
    this site), and the weights solved together; `warm` itself, solved afresh, competes."""
    grids = Grids.of(func, lo, hi, samples)
    p = grids.problem(spike_penalty, FIT_POINTS, floor=range_weight)
    warm = warm if warm is not None and warm.chains == chains else None
    keywords: dict[str, Any] = dict(relu_like=relu_like, spike_penalty=spike_penalty, range_weight=range_weight)
    screened: list[tuple[float, int, list[float], list[GateParams]]] = []
    for cuts in cut_sets(chains, lo, hi, grids.ordered()):
        quick = [quick_fit(f, k, lo, hi, samples, keep_starts=SCREEN_STARTS, **keywords) for f in pieces(func, cuts)]
        screened.append((cost(joint_weights(quick, p), p), len(screened), cuts, quick))
    _, _, cuts, quick = min(screened)
    gates = [fit(f, k, lo, hi, samples, warm=[quick[i], *([warm.chain(i)] if warm is not None else [])],
                 **keywords, **search).params for i, f in enumerate(pieces(func, cuts))]
    tried = [joint_weights(gates, p)]
    if warm is not None and warm.k == k:
        tried.append(joint_weights([warm.chain(i) for i in range(chains)], p))
    costs = [cost(g, p) for g in tried]
    best = tried[int(np.argmin(costs))]
    mse, max_err, spikes = evaluate(best, func, lo, hi, grids=grids)
    return FitResult(best, mse, max_err, spikes, lo, hi)


def chains_notes(chains: int, gates: list[GateParams]) -> list[str]:
    """What --chains did: how many of the gates have several chains."""
    if chains == 1:
        return []
    several = sum(g.chains > 1 for g in gates)
    return [f"chains: {several} of {len(gates)} gates are {chains} chains of K neurons side by side (latency K, "
            f"{chains} x K neurons each); per-channel gates keep one chain"]
