"""Find T, h, d of a K-neuron gate for a scalar function (numpy only, deterministic for a seed).

The search: structured starts (binary ladders, staircases, segment chains, warm
starts such as a smaller K's solution) each get a short exact-block descent on a
coarse training set; the best then goes through iterated local search (kick one
or two neurons, jitter, swap neighbours, descend, keep if better) and a final
polish on a finer set, since fits overfit a coarse grid. Slivers (a neuron firing
between training points with a weight fitted elsewhere) are looked for on a far
denser grid and mended. Quality is reported on a dense grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from amos_onnx.fit import kernel as fit_kernel
from amos_onnx.fit.blocks import Problem, descend, rest, solve_weights, total_cost
from amos_onnx.fit.grids import GRID_FLOOR, Grids, dense, finite, problem, quality_grid, ranks
from amos_onnx.fit.starts import stopped_top, structured_starts
from amos_onnx.fit.tails import open_bottom, tail_excursion
from amos_onnx.gate import GateParams

log = logging.getLogger(__name__)

Func = Callable[[np.ndarray], np.ndarray]
Params = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters with their quality on a dense grid over the fitted range."""

    params: GateParams
    mse: float
    max_error: float
    mean_spikes: float
    lo: float
    hi: float


def _kick(rng: np.random.Generator, T: np.ndarray, h: np.ndarray, d: np.ndarray, lo: float, hi: float,
          where: np.ndarray | None = None) -> None:
    """One random move of iterated local search, in place; re-placed neurons land uniformly on the range, or on
    one of `where` (sample quantiles: where the data is)."""
    k, width = len(T), hi - lo
    move = rng.integers(3) if k > 1 else 0
    if move == 0:  # re-place one or two neurons
        for j in rng.choice(k, size=min(k, int(rng.integers(1, 3))), replace=False):
            T[j] = rng.uniform(lo, hi) if where is None else where[int(rng.integers(where.size))]
            h[j] = width * 2.0 ** -rng.uniform(1, k + 1) * (1 if rng.random() < 0.85 else -1)
            d[j] = 0.0
    elif move == 1:  # jitter every threshold and reset a little
        T += rng.normal(0, 0.01 * width, k)
        h *= np.exp(rng.normal(0, 0.05, k))
    else:  # swap two neighbours
        j = int(rng.integers(k - 1))
        for a in (T, h, d):
            a[j], a[j + 1] = a[j + 1], a[j]


def _search(p: Problem, start: Params, lo: float, hi: float, kicks: int, deadline: float,
            rng: np.random.Generator, where: np.ndarray | None = None) -> Params:
    T, h, d = (a.copy() for a in start)
    scale = hi - lo
    best = descend(p, T, h, d, scale, sweeps=6)
    for _ in range(kicks):
        if time.perf_counter() > deadline:
            break
        T2, h2, d2 = T.copy(), h.copy(), d.copy()
        _kick(rng, T2, h2, d2, lo, hi, where)
        if p.lam == 0.0:
            d2 = solve_weights(T2, h2, p.x, p.target, p.w)
        cost = descend(p, T2, h2, d2, scale, sweeps=3)
        if cost < best * (1 - 1e-9):
            best, T, h, d = cost, T2, h2, d2
    return T, h, d


def _max_error(p: Problem, c: Params) -> float:
    return float(np.max(np.abs(rest(*c, p.x, 0)[0] - p.target)))


SLIVER_POINTS = 2**19 + 1
KICKS = 20  # the local search's default iteration budget


def _mend_slivers(fine: Problem, slivers: Problem, T: np.ndarray, h: np.ndarray, d: np.ndarray, scale: float,
                  rounds: int = 2) -> None:
    """A neuron can fire on a sliver between training points (a segment's edge, say) with a weight fitted
    elsewhere: a glitch the squared error hardly sees. `slivers` points whose error exceeds twice the fine
    set's max error join the fine set at fine-point weight, and the gate descends again (in place)."""
    x, target, w = fine.x, fine.target, fine.w
    for _ in range(rounds):
        err = np.abs(rest(T, h, d, slivers.x, 0)[0] - slivers.target)
        bad = err > 2 * _max_error(Problem(x, target, w, fine.lam), (T, h, d))
        if not bad.any():
            return
        x, target = np.concatenate([x, slivers.x[bad]]), np.concatenate([target, slivers.target[bad]])
        w = np.concatenate([w, np.full(int(bad.sum()), float(np.median(fine.w)))])
        descend(Problem(x, target, w / w.sum(), fine.lam), T, h, d, scale, sweeps=2)


QUALITY_POINTS = 200_001


def evaluate(params: GateParams, func: Func, lo: float, hi: float, points: int = QUALITY_POINTS,
             grids: Grids | None = None) -> tuple[float, float, float]:
    """MSE, max abs error and mean spikes of the float32 gate on a dense uniform grid (`grids`' when given)."""
    grid, f = grids.quality_grid(points) if grids is not None else quality_grid(func, lo, hi, points)
    y, s = fit_kernel.simulate(params, grid)
    err = y.astype(np.float64) - f
    return float(np.mean(err**2)), float(np.max(np.abs(err))), float(np.mean(s))


REFINE_SLIVER_POINTS = 2**17 + 1  # refine runs once per channel group: a quarter of fit's sliver grid
REFINE_STARTS = 2  # structured starts on the samples' own core range that a refine also descends


def refine(func: Func, lo: float, hi: float, samples: np.ndarray, start: GateParams, *, relu_like: bool = False,
           spike_penalty: float = 0.0, range_weight: float = GRID_FLOOR, kicks: int = 0, seed: int = 0) -> GateParams:
    """A gate refitted from `start` to other samples and range by descent: a site's gate refitted to a group of
    its channels' values. The REFINE_STARTS structured starts on the samples' core range that cost least as they
    are compete with it; the best descended one then takes `kicks` local-search moves (fit's, seeded by `seed`).
    The start is kept unless the refit costs less on the fine set without leaving f's range beyond it (where f
    saturates) by more than the start does. range_weight: the share of the loss on a uniform grid over [lo, hi]
    (Search.range_weight)."""
    prepared = finite(samples)
    coarse = problem(func, lo, hi, prepared, spike_penalty, 2049, floor=range_weight)
    k = start.k
    candidates = [_arrays(start)]
    core_lo, core_hi = (float(q) for q in np.quantile(samples, [0.001, 0.999]))
    if core_hi > core_lo:
        starts = []
        for T, h, d in structured_starts(func, k, core_lo, core_hi, relu_like, samples):
            T, h = T.astype(np.float64), h.astype(np.float64)
            d = solve_weights(T, h, coarse.x, coarse.target, coarse.w) if spike_penalty == 0.0 else d.astype(np.float64)
            starts.append((T, h, d))
        starts.sort(key=lambda c: total_cost(coarse, *c))
        candidates += starts[:REFINE_STARTS]
    descended: list[tuple[float, int, Params]] = []
    for c in candidates:
        T, h, d = (a.copy() for a in c)
        descended.append((descend(coarse, T, h, d, hi - lo, sweeps=6), len(descended), (T, h, d)))
    T, h, d = min(descended, key=lambda r: (r[0], r[1]))[2]
    if kicks:
        where = ranks(samples[np.isfinite(samples)])
        T, h, d = _search(coarse, (T, h, d), lo, hi, kicks, float("inf"), np.random.default_rng(seed), where)
    fine = problem(func, lo, hi, prepared, spike_penalty, 8193, floor=range_weight)
    descend(fine, T, h, d, hi - lo, sweeps=3)
    _mend_slivers(fine, dense(func, lo, hi, REFINE_SLIVER_POINTS), T, h, d, hi - lo)
    refit = open_bottom(GateParams(T, h, d), func, lo, hi)
    was, now = (_arrays(g) for g in (start, refit))
    if total_cost(fine, *now) >= total_cost(fine, *was):
        return start
    if tail_excursion(refit, func, lo, hi) > max(tail_excursion(start, func, lo, hi), _max_error(fine, now)):
        return start
    return refit


def _arrays(params: GateParams) -> Params:
    return (params.thresholds.astype(np.float64), params.resets.astype(np.float64), params.weights.astype(np.float64))


def pad_start(params: GateParams, k: int, hi: float, width: float) -> Params:
    """A warm start of length k: truncated, or padded with silent neurons above the range."""
    T, h, d = (np.asarray(a, np.float64)[:k] for a in (params.thresholds, params.resets, params.weights))
    pad = k - len(T)
    if pad > 0:
        T = np.concatenate([T, np.full(pad, hi + width)])
        h, d = np.concatenate([h, np.zeros(pad)]), np.concatenate([d, np.zeros(pad)])
    return T, h, d


@dataclass(frozen=True)
class Search:
    """How fit() searches. relu_like: binary-ladder starts, only the one costing least as it is descends, and
    no local search: a rounding ladder is near the quantisation bound, and the finish's descent on the same
    points polishes it. spike_penalty: the cost of one mean spike, in squared error. kicks: local-search moves
    (deterministic for a seed); time_budget: seconds that may stop the search earlier, at the price of run-to-run
    differences. keep_starts: how many starts get a descent, those with the least cost as they are (a refit's
    budget). tails: points beyond the range in the loss, where f saturates. range_weight: with samples, the share of
    the loss on a uniform grid over the whole range (0: the samples alone)."""

    relu_like: bool = False
    spike_penalty: float = 0.0
    kicks: int = KICKS
    time_budget: float | None = None
    seed: int = 0
    keep_starts: int | None = None
    tails: bool = False
    range_weight: float = GRID_FLOOR


def _starts(func: Func, k: int, lo: float, hi: float, finite: np.ndarray, samples: np.ndarray | None,
            search: Search, warm: Sequence[GateParams]) -> list[tuple[np.ndarray, ...]]:
    """Structured starts on the range where the data really is and on the whole range (a warm start fitted on
    another range is often not the best one), the warm starts, and with a spike penalty the warm starts behind a
    neuron that stops inputs in f's flat top with one spike."""
    starts: list[tuple[np.ndarray, ...]] = []
    if finite.size:
        core_lo, core_hi = np.quantile(finite, [0.001, 0.999])
        if core_hi > core_lo and (core_lo > lo or core_hi < hi):
            starts += structured_starts(func, k, float(core_lo), float(core_hi), search.relu_like, samples)
    starts += structured_starts(func, k, lo, hi, search.relu_like, samples)
    starts += [pad_start(w, k, hi, hi - lo) for w in warm]
    if search.spike_penalty > 0:
        starts += [s for s in (stopped_top(func, pad_start(w, k, hi, hi - lo), lo, hi) for w in warm) if s is not None]
    return starts


def _best_start(coarse: Problem, starts: list[tuple[np.ndarray, ...]], search: Search,
                width: float) -> tuple[int, Params, Params]:
    """The start that descends lowest on the coarse set (weights solved first when fitting for error alone);
    with keep_starts (1 for ReLU-like f) only the starts best as they are get a descent. (index, start as given,
    descended)."""
    raw, solved = [], []
    for T, h, d in starts:
        T, h, d = T.astype(np.float64), h.astype(np.float64), d.astype(np.float64)
        raw.append((T.copy(), h.copy(), d.copy()))
        if search.spike_penalty == 0.0:
            d = solve_weights(T, h, coarse.x, coarse.target, coarse.w)
        solved.append((T, h, d))
    order = sorted(range(len(solved)), key=lambda i: (total_cost(coarse, *solved[i]), i))
    keep = 1 if search.relu_like else search.keep_starts
    ranked = [(descend(coarse, *solved[i], width, sweeps=2), i, solved[i]) for i in order[:keep]]
    _, chosen, start = min(ranked, key=lambda r: (r[0], r[1]))
    return chosen, raw[chosen], start


def _finish(grids: Grids, problems: tuple[Problem, Problem], candidates: list[Params]) -> Params:
    """The candidate best on the fine set, polished and mended of slivers, then every candidate against it on the
    check set (judged denser than fitted: with 2^K levels a gate can overfit 8,193 points); a candidate with a
    sliver (max error on a far denser grid over twice that on the fine set) is out unless every one has."""
    fine, check = problems
    T, h, d = (a.copy() for a in min(candidates, key=lambda c: total_cost(fine, *c)))
    scale = grids.hi - grids.lo
    descend(fine, T, h, d, scale, sweeps=4)
    slivers = grids.dense(SLIVER_POINTS)
    _mend_slivers(fine, slivers, T, h, d, scale)
    options = [*candidates, (T, h, d)]
    ranked = sorted(range(len(options)), key=lambda i: (total_cost(check, *options[i]), i))
    fair = (i for i in ranked if _max_error(slivers, options[i]) <= 2 * _max_error(fine, options[i]))
    return options[next(fair, ranked[0])]  # the best fair one: slivers looked for in order of cost, until one is not


def _started(func: Func, k: int, lo: float, hi: float, samples: np.ndarray | None, search: Search,
             warm: Sequence[GateParams]) -> tuple[Grids, Problem, Params, Params]:
    """A fit's point sets, its coarse training set, and its best start (as given and descended on that set)."""
    grids = Grids.of(func, lo, hi, samples)
    # ReLU-like gates resolve 2^K levels: they need the fine set from the start.
    coarse = grids.problem(search.spike_penalty, 8193 if search.relu_like else 2049, search.tails,
                           floor=search.range_weight)
    starts = _starts(func, k, lo, hi, grids.ordered(), samples, search, warm)
    _, raw, start = _best_start(coarse, starts, search, hi - lo)
    return grids, coarse, raw, start


def quick_fit(func: Func, k: int, lo: float, hi: float, samples: np.ndarray | None = None, *,
              search: Search | None = None, **keywords: Any) -> GateParams:
    """A fit's first stage alone, a fraction of its time: the best of the structured starts after a short
    descent on the coarse set, without the local search, the polish on finer sets or the tails' refit. To compare
    problems by (chains.fit_chains: the cuts), not to convert with."""
    search = search if search is not None else Search(**keywords)
    return GateParams(*_started(func, k, lo, hi, samples, search, ())[3])


def fit(func: Func, k: int, lo: float, hi: float, samples: np.ndarray | None = None, *,
        warm: Sequence[GateParams] = (), fallback: Sequence[GateParams] = (), search: Search | None = None,
        **keywords: Any) -> FitResult:
    """Fit a K-neuron gate to func on [lo, hi], weighted by samples when given, warm-started from `warm`, searched
    as `search` says (or its fields as keywords: relu_like=True, kicks=40, ...). `fallback`: gates (of fewer
    neurons, say) that compete with the result as they are, padded with silent neurons, without starting a search.

    Where f saturates beyond the range, a fit whose gate leaves f's range out there by more than its
    in-range max error is redone from itself and every warm start with points beyond the range in the loss.
    """
    search = search if search is not None else Search(**keywords)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"fit range must be finite with lo < hi, got [{lo}, {hi}]")
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    deadline = time.perf_counter() + (search.time_budget if search.time_budget is not None else float("inf"))
    rng = np.random.default_rng(search.seed)
    lam, tails, floor = search.spike_penalty, search.tails, search.range_weight
    grids, coarse, raw, start = _started(func, k, lo, hi, samples, search, warm)
    T, h, d = (start if search.relu_like
               else _search(coarse, start, lo, hi, search.kicks, deadline, rng, grids.ranks()))
    fine = coarse if search.relu_like else grids.problem(lam, 8193, tails, floor=floor)
    check = grids.problem(lam, 65537, tails, sort=False, floor=floor)  # only scored
    # The search's result, the chosen start as it was for ReLU-like f (a rounding ladder is near-optimal), and the
    # warm starts (padded with silent neurons, so adding neurons never makes a fit worse) compete.
    candidates = [(T, h, d)] + ([raw] if search.relu_like else [])
    candidates += [pad_start(w, k, hi, hi - lo) for w in [*warm, *fallback]]
    T, h, d = _finish(grids, (fine, check), candidates)
    params = open_bottom(GateParams(T, h, d), func, lo, hi)
    mse, max_err, spikes = evaluate(params, func, lo, hi, grids=grids)
    if not tails and tail_excursion(params, func, lo, hi) > max_err:
        return fit(func, k, lo, hi, samples, warm=[params, *warm], fallback=fallback,
                   search=replace(search, tails=True))
    log.debug("fit K=%d on [%g, %g]: mse %.3g max %.3g spikes %.2f", k, lo, hi, mse, max_err, spikes)
    return FitResult(params, mse, max_err, spikes, lo, hi)
