"""The fit stage: gate parameters for every converting site, on its calibration samples or data-free."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.find.composite import COMPOSITE
from amos_onnx.find.gates import Activation
from amos_onnx.find.sites import Site
from amos_onnx.fit import library
from amos_onnx.fit.search import FitResult, fit, refine, solve_weights
from amos_onnx.gate import MAX_K, GateParams, simulate
from amos_onnx.parallel import fork_map

log = logging.getLogger(__name__)

REFIT_KICKS = 6  # local-search moves of a calibrated refit by default (convert --kicks; the shipped fits used 300)
REFIT_STARTS = 8  # a refit descends only this many of its starts (13 for a smooth gate): fitter.fit's keep_starts


@dataclass(frozen=True)
class SiteFit:
    """A site's gate and how it was obtained; error and spikes on the fitted range's dense grid."""

    params: GateParams
    source: str  # "calibrated", "calibrated per channel" or "data-free"
    lo: float
    hi: float
    mse: float
    max_error: float
    mean_spikes: float
    samples: int = 0


def _range(act: Activation, res: Reservoir | None) -> tuple[float, float]:
    if res is None or res.seen == 0:
        return act.lo, act.hi
    lo, hi = res.lo, res.hi
    if act.relu_like:
        lo = min(lo, 0.0)
    if hi - lo < 1e-3:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


_DATA_FREE: dict[tuple[str, float, float, bool, int, float], FitResult] = {}


def absolute_penalty(act: Activation, samples: np.ndarray | None, lo: float, hi: float, penalty: float) -> float:
    """The fitter's cost per mean spike for a relative `penalty`: the fraction of f's mean square (on the
    samples, else on the range) that one spike per gate may cost in squared error. Scale-free, so one value
    suits every site of a network."""
    if penalty == 0.0:
        return 0.0
    x = samples.astype(np.float64) if samples is not None else np.linspace(lo, hi, 4001)
    return penalty * float(np.mean(act.func(x) ** 2))


def _data_free(act: Activation, k: int, penalty: float = 0.0) -> FitResult:
    """Data-free fits depend only on the function (its label), range, K and penalty: fit each once per process.
    With a spike penalty the shipped gate is refitted from itself on the range."""
    key = (act.label, act.lo, act.hi, act.relu_like, k, penalty)
    if key not in _DATA_FREE:
        shipped = library.lookup(act, k)
        if penalty:
            _DATA_FREE[key] = fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like, kicks=REFIT_KICKS,
                                  keep_starts=REFIT_STARTS, warm=[shipped.params] if shipped else [],
                                  spike_penalty=absolute_penalty(act, None, act.lo, act.hi, penalty))
        else:
            _DATA_FREE[key] = shipped or fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like)
    return _DATA_FREE[key]


def _per_channel(act: Activation, shared: FitResult, samples: np.ndarray | None) -> GateParams:
    """Shared T and h, one least-squares d per channel (the spike pattern does not depend on the slope)."""
    assert act.channel_funcs is not None
    grid = np.linspace(shared.lo, shared.hi, 4001)
    x = grid if samples is None else np.concatenate([samples.astype(np.float64), grid])
    w = np.full(x.size, 1.0 / x.size)
    T, h = shared.params.thresholds.astype(np.float64), shared.params.resets.astype(np.float64)
    d = np.stack([solve_weights(T, h, x, f(x), w) for f in act.channel_funcs])
    c = len(act.channel_funcs)
    return GateParams(np.tile(T, (c, 1)), np.tile(h, (c, 1)), d, axis=act.axis)


def sample_error(params: GateParams, func: Callable[[np.ndarray], np.ndarray],
                 x: np.ndarray) -> tuple[float, float, float]:
    """MSE, max error and mean spikes of a gate against its function on the values x (any shape the gate takes:
    a per-channel gate needs its channel axis)."""
    y, s = simulate(params, x)
    err = y.astype(np.float64) - func(np.asarray(x, np.float64))
    return float(np.mean(err**2)), float(np.max(np.abs(err))), float(np.mean(s))


CHANNEL_MIN_SAMPLES = 64  # a channel with fewer calibration values keeps the site's gate
CHANNEL_GROUPS = 8  # at most this many refined gates per site: channels with alike values share one
# A group's range: its channels' exact range widened by this share of its width on each side (within the site's),
# since a channel's values from fresh inputs leave its calibrated range more often than the site's do. On
# test_per_channel's four narrow Sigmoid channels, K=6, 200 fresh inputs: max error 0.099 with no margin, 0.055
# with 0.5 (one gate for all: 0.053); mean error 0.0045 and 0.0055 (one gate: 0.0080).
CHANNEL_MARGIN = 0.5


def channel_groups(spans: np.ndarray, groups: int) -> np.ndarray:
    """A group index per channel: k-means (deterministic, from channels evenly spaced in the order of their
    midpoints) on each channel's [low, high] value span, so channels whose values lie alike share a gate."""
    n = len(spans)
    if n <= groups:
        return np.arange(n)
    order = np.argsort(spans.mean(axis=1), kind="stable")
    centres = spans[order[np.linspace(0, n - 1, groups).round().astype(int)]].astype(np.float64)
    label = np.zeros(n, dtype=np.int64)
    for _ in range(50):
        label = np.argmin(((spans[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        moved = np.array([spans[label == g].mean(axis=0) if (label == g).any() else centres[g] for g in range(groups)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return np.unique(label, return_inverse=True)[1]


def _channel_gates(act: Activation, site: FitResult, res: Reservoir, lam: float,
                   seed: int) -> tuple[GateParams, float, float, float]:
    """One gate per channel of the site's input (along res.axis): channels grouped by where their values lie
    (channel_groups on their 1%..99% quantiles, CHANNEL_GROUPS at most), the site's gate refined on each group's
    values over the group's range (exact, widened by CHANNEL_MARGIN; fitter.refine with the same absolute spike
    penalty); a channel with fewer than CHANNEL_MIN_SAMPLES values keeps the site's gate. With the MSE, max
    error and mean spikes of those gates on all the samples."""
    order = np.argsort(res.channels, kind="stable")
    edges = np.searchsorted(res.channels[order], np.arange(res.channel_count + 1))
    values = [res.values[order[edges[c]:edges[c + 1]]] for c in range(res.channel_count)]
    sampled = [c for c in range(res.channel_count) if values[c].size >= CHANNEL_MIN_SAMPLES]
    group = np.zeros(res.channel_count, dtype=np.int64)  # 0: the site's gate; g + 1: refined gate g
    gates = [site.params]
    if sampled:
        spans = np.array([np.quantile(values[c], [0.01, 0.99]) for c in sampled])
        label = channel_groups(spans, CHANNEL_GROUPS)
        for g in range(int(label.max()) + 1):
            members = [c for c, lab in zip(sampled, label) if lab == g]
            lo, hi = float(res.channel_lo[members].min()), float(res.channel_hi[members].max())
            margin = CHANNEL_MARGIN * (hi - lo)
            lo, hi = max(lo - margin, site.lo), min(hi + margin, site.hi)
            if act.relu_like:
                lo = min(lo, 0.0)
            if hi - lo < 1e-3:
                lo, hi = lo - 0.5, hi + 0.5
            x = np.concatenate([values[c] for c in members])
            gates.append(refine(act.func, lo, hi, x, site.params, relu_like=act.relu_like, spike_penalty=lam,
                                seed=seed))
            group[members] = len(gates) - 1
    squares, worst, spikes = 0.0, 0.0, 0.0  # over all the samples, one simulation per gate
    of_value = group[res.channels]
    for g, gate in enumerate(gates):
        x = res.values[of_value == g]
        if x.size:
            mse, most, mean_spikes = sample_error(gate, act.func, x)
            squares, worst, spikes = squares + mse * x.size, max(worst, most), spikes + mean_spikes * x.size
    n = max(res.values.size, 1)
    per = [gates[g] for g in group]
    params = GateParams(np.stack([g.thresholds for g in per]), np.stack([g.resets for g in per]),
                        np.stack([g.weights for g in per]), axis=res.axis)
    return params, squares / n, worst, spikes / n


def fit_site(act: Activation, k: int, res: Reservoir | None, seed: int = 0, spike_penalty: float = 0.0,
             error_only: GateParams | None = None, per_channel: bool = False, kicks: int = REFIT_KICKS,
             start: GateParams | None = None) -> SiteFit:
    """Fit one site's gate: cached data-free fit, or a fit weighted by the site's samples. spike_penalty is
    relative (absolute_penalty): 0 fits for error alone. `error_only`: this site's error-only calibrated refit
    when already made (_refit_key), so a penalised refit does not make it again. `per_channel`: with samples
    that know their channel (Reservoir.axis), the site's gate is then refined per channel (_channel_gates).
    `kicks`: local-search moves of each calibrated refit (the data-free fits come from the library). `start`: an
    earlier calibrated fit of this site to start from too (fit_sites' refocus): the refit's cost never ends
    above that fit's, and with a spike penalty only the penalised refit is made again."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"K must be in 1..{MAX_K}")
    lo, hi = _range(act, res)
    if res is None or res.seen == 0:
        result, source, samples = _data_free(act, k, spike_penalty), "data-free", None
    else:
        samples = res.values
        lam = absolute_penalty(act, samples, lo, hi, spike_penalty)  # of the refit and of the per-channel gates
        shipped = library.lookup(act, k)  # a warm start for the refit on the site's own samples
        warm = [shipped.params] if shipped is not None else []
        warm += [start] if start is not None else []
        if not spike_penalty or (error_only is None and start is None):
            # The warm start already carries the search; a short local search refits it to the samples.
            result = fit(act.func, k, lo, hi, samples, relu_like=act.relu_like, warm=warm, kicks=kicks,
                         seed=seed, keep_starts=REFIT_STARTS)
            error_only = result.params
        if spike_penalty:
            # The error-only refit joins the starts, so the penalised refit never returns a gate that the
            # error-only one beats on the penalised cost (the fit's final candidates include its warm starts;
            # without it, a refit descending only its best few starts, with a few moves, sometimes did).
            result = fit(act.func, k, lo, hi, samples, relu_like=act.relu_like,
                         warm=[*warm, *([error_only] if error_only is not None else [])],
                         kicks=kicks, seed=seed, keep_starts=REFIT_STARTS, spike_penalty=lam)
        source = "calibrated"
    params = result.params if act.channel_funcs is None else _per_channel(act, result, samples)
    mse, max_err, spikes = result.mse, result.max_error, result.mean_spikes
    if per_channel and samples is not None and res is not None and res.axis is not None and act.channel_funcs is None:
        params, mse, max_err, spikes = _channel_gates(act, result, res, lam, seed)
        source = "calibrated per channel"
    elif samples is not None:
        mse, max_err, spikes = sample_error(result.params, act.func, samples)
    return SiteFit(params, source, lo, hi, mse, max_err, spikes, 0 if res is None else res.seen)


AUTO = "auto"
DEFAULT_TARGET_MSE = 1e-4


def auto_fit(act: Activation, res: Reservoir | None, target_mse: float, seed: int = 0,
             spike_penalty: float = 0.0, per_channel: bool = False, kicks: int = REFIT_KICKS) -> SiteFit:
    """The fit with the smallest K in 4..16 whose MSE (on the site's samples, or its default range) meets the
    target, found by bisection over K (error falls with K); the K = 16 fit when none does."""
    lo, hi = library.K_RANGE.start, library.K_RANGE.stop - 1
    fits: dict[int, SiteFit] = {}

    def at(k: int) -> SiteFit:
        if k not in fits:
            fits[k] = fit_site(act, k, res, seed, spike_penalty, per_channel=per_channel, kicks=kicks)
        return fits[k]

    if at(hi).mse > target_mse:
        return at(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).mse <= target_mse:
            hi = mid
        else:
            lo = mid + 1
    return at(hi)


def site_k(site: Site, k: int | str | None, k_per_op: dict[str, int]) -> int | str:
    """K for one site: --k-per-op for its op, else --k (a number, or "auto"), else the activation's default."""
    assert site.activation is not None
    op = COMPOSITE if len(site.nodes) > 1 else site.op
    if op in k_per_op:
        return k_per_op[op]
    if k == AUTO:
        return AUTO
    return int(k) if k is not None else site.activation.k


class Job(NamedTuple):
    """One fit of fit_sites, run in a worker by _fit_job."""

    act: Activation
    k: int | str
    res: Reservoir | None
    target_mse: float
    seed: int
    penalty: float
    per_channel: bool
    kicks: int = REFIT_KICKS
    error_only: GateParams | None = None
    start: GateParams | None = None


Key = tuple[str, str, str] | str  # sites with the same key share one fit


def _fit_job(job: Job) -> SiteFit:
    if job.k == AUTO:
        return auto_fit(job.act, job.res, job.target_mse, job.seed, job.penalty, job.per_channel, job.kicks)
    return fit_site(job.act, int(job.k), job.res, job.seed, job.penalty, job.error_only, job.per_channel, job.kicks,
                    job.start)


# Error-only calibrated refits made in this process, by _refit_key: a penalised refit starts from the error-only
# one, so converting the same calibration again with a spike penalty (a penalty sweep) does not redo it.
_REFITS: dict[tuple[object, ...], GateParams] = {}


def _refit_key(job: Job) -> tuple[object, ...] | None:
    """What an error-only calibrated refit depends on (the samples by digest), or None for a job that makes
    none to reuse (data-free, automatic K, per-channel gates)."""
    act, res = job.act, job.res
    if job.k == AUTO or res is None or res.seen == 0 or act.channel_funcs is not None or job.per_channel:
        return None
    digest = hashlib.blake2b(np.ascontiguousarray(res.values).tobytes(), digest_size=16).hexdigest()
    return (act.label, act.relu_like, int(job.k), job.seed, job.kicks, REFIT_STARTS, _range(act, res), digest)


def _shares(seen: list[tuple[Key, int]]) -> dict[Key, float]:
    """Each fit's share of the network's gate evaluations, from the values each site saw in calibration
    (`seen`: one (key, count) per site), over the mean per site: the mean spikes per gate a network spends is
    sum(share * spikes) / sites, so a penalty on it weighs each fit's spikes by its share (one spike at an
    early, large site costs more than one at a squeeze-excitation gate). 1 for a fit none of whose sites has
    calibration samples."""
    sampled = [n for _, n in seen if n > 0]
    mean = sum(sampled) / max(len(sampled), 1)
    totals: dict[Key, int] = {}
    for key, n in seen:
        totals[key] = totals.get(key, 0) + n
    return {key: n / mean if n > 0 else 1.0 for key, n in totals.items()}


class Refocus(NamedTuple):
    """fit_sites again for some sites only: the fits of `sites` are refitted with `kicks` local-search moves,
    each starting from its `earlier` fit too (at the K it had, for automatic K); every other site keeps its
    earlier fit."""

    sites: frozenset[str]
    earlier: dict[str, SiteFit]
    kicks: int


def fit_sites(
    sites: list[Site], reservoirs: dict[str, Reservoir], k: int | str | None, seed: int = 0,
    k_per_op: dict[str, int] | None = None, target_mse: float = DEFAULT_TARGET_MSE, spike_penalty: float = 0.0,
    per_channel: bool = False, kicks: int = REFIT_KICKS, refocus: Refocus | None = None,
) -> dict[str, SiteFit]:
    """One SiteFit per converting site, keyed by site name; sites seeing the same tensor with the same
    function and K share one fit. Fits run in parallel processes (AMOS_ONNX_JOBS, default one per CPU).
    spike_penalty (relative, absolute_penalty) is spread over the sites by their share of the network's
    gate evaluations (_shares), so it trades the network's mean spikes per gate. per_channel: one gate per
    channel where the calibration kept channels (pipeline.plan's per_channel), else one per site. kicks:
    local-search moves of each calibrated refit (more: lower error or fewer spikes, for more fitting time).
    refocus: refit only some sites' fits, with more moves (pipeline.fit_plan's focus chooses them)."""
    keys: dict[str, Key] = {}
    work: dict[Key, Job] = {}
    seen: list[tuple[Key, int]] = []
    for site in sites:
        if not site.converts or site.activation is None:
            continue
        act, res = site.activation, None if site.graph else reservoirs.get(site.input)
        kk = site_k(site, k, k_per_op or {})
        key: Key = (site.input, act.label, str(kk))
        if act.channel_funcs is not None:  # per-channel slopes: never shared
            key = site.name
        keys[site.name] = key
        seen.append((key, 0 if res is None else res.seen))
        work.setdefault(key, Job(act, kk, res, target_mse, seed, spike_penalty, per_channel, kicks))
    refit_keys = {key: _refit_key(job) for key, job in work.items()}
    if spike_penalty:
        shares = _shares(seen)
        work = {key: job._replace(penalty=spike_penalty * shares[key], error_only=_REFITS.get(rk) if rk else None)
                for (key, job), rk in zip(work.items(), refit_keys.values())}
    if refocus is not None:
        first = {key: refocus.earlier[name] for name, key in keys.items() if name in refocus.sites}
        work = {key: job._replace(kicks=refocus.kicks,  # per-channel gates cannot start the site's refit
                                  start=first[key].params if first[key].params.axis is None else None,
                                  k=first[key].params.k if job.k == AUTO else job.k)
                for key, job in work.items() if key in first}
    results = dict(zip(work, fork_map(_fit_job, list(work.values()))))  # each fit seeded alone: order-free
    if not spike_penalty and refocus is None:
        _REFITS.update({rk: results[key].params for key, rk in refit_keys.items() if rk is not None})
    fits = {name: results[key] if key in results else refocus.earlier[name]  # type: ignore[union-attr]
            for name, key in keys.items()}
    for name, fit_ in fits.items():
        log.info("%s: K=%d %s, mse %.3g", name, fit_.params.k, fit_.source, fit_.mse)
    return fits
