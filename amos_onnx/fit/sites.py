"""The fit stage: gate parameters for every converting site, on its calibration samples or data-free."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.find.composite import COMPOSITE
from amos_onnx.find.gates import Activation
from amos_onnx.find.sites import Site
from amos_onnx.fit import library
from amos_onnx.fit.channels import channel_gates
from amos_onnx.fit.search import FitResult, fit, solve_weights
from amos_onnx.gate import MAX_K, GateParams, sample_error
from amos_onnx.options import AUTO, REFIT_KICKS, FitOptions
from amos_onnx.parallel import fork_map

log = logging.getLogger(__name__)

REFIT_STARTS = 8  # a refit descends only this many of its starts: search.fit's keep_starts


class FitSource(StrEnum):
    """Where a site's gate comes from."""

    CALIBRATED = "calibrated"
    PER_CHANNEL = "calibrated per channel"
    SEQUENTIAL = "calibrated sequentially"  # refitted on the inputs it gets with the sites before it spiking
    DATA_FREE = "data-free"


@dataclass(frozen=True)
class SiteFit:
    """A site's gate and how it was obtained; error and spikes on the fitted range's dense grid."""

    params: GateParams
    source: FitSource
    lo: float
    hi: float
    mse: float
    max_error: float
    mean_spikes: float
    samples: int = 0
    seconds: float = 0.0  # wall time of the fit

    @property
    def calibrated(self) -> bool:
        return self.source is not FitSource.DATA_FREE


def _range(act: Activation, res: Reservoir | None) -> tuple[float, float]:
    if res is None or res.seen == 0:
        return act.lo, act.hi
    lo, hi = res.lo, res.hi
    if act.relu_like:
        lo = min(lo, 0.0)
    if hi - lo < 1e-3:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


TOP_K = library.K_RANGE.stop - 1  # the library's largest K: a fit beyond it competes with one at it
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
            _DATA_FREE[key] = shipped or fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like,
                                             fallback=[_data_free(act, TOP_K).params] if k > TOP_K else [])
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


def _calibrated(act: Activation, k: int, samples: np.ndarray, fit_range: tuple[float, float], job: Job) -> FitResult:
    """A site's gate refitted on its samples, warm-started from the library's gate (and job.start); beyond the
    library's largest K, this site's fit at that K competes with it (fit's fallback: a search over many neurons
    can land worse than one over fewer, and adding neurons must not make a gate worse). With a spike penalty, the
    error-only refit (job.error_only when already made) joins the penalised refit's starts, so the penalised
    refit never returns a gate that the error-only one beats on the penalised cost."""
    lo, hi = fit_range
    options = job.options
    shipped = library.lookup(act, k)
    warm = [shipped.params] if shipped is not None else []
    warm += [job.start] if job.start is not None else []
    top = job._replace(k=TOP_K, error_only=None, start=None)
    beyond = [_calibrated(act, TOP_K, samples, fit_range, top).params] if k > TOP_K else []
    error_only, result = job.error_only, None
    if not options.spike_penalty or (error_only is None and job.start is None):
        result = fit(act.func, k, lo, hi, samples, relu_like=act.relu_like, warm=warm, fallback=beyond,
                     kicks=options.kicks, seed=options.seed, keep_starts=REFIT_STARTS,
                     range_weight=options.range_weight)
        error_only = result.params
    if options.spike_penalty:
        lam = absolute_penalty(act, samples, lo, hi, options.spike_penalty)
        result = fit(act.func, k, lo, hi, samples, relu_like=act.relu_like,
                     warm=[*warm, *([error_only] if error_only is not None else [])], fallback=beyond,
                     kicks=options.kicks, seed=options.seed, keep_starts=REFIT_STARTS, spike_penalty=lam,
                     range_weight=options.range_weight)
    assert result is not None
    return result


def fit_site(act: Activation, k: int, res: Reservoir | None, options: FitOptions | None = None, *,
             error_only: GateParams | None = None, start: GateParams | None = None) -> SiteFit:
    """Fit one site's gate: the cached data-free fit, or a fit weighted by the site's samples (options'
    spike_penalty is relative to the site, absolute_penalty; seed and kicks drive the refit's search). With
    options.per_channel and samples that know their channel (Reservoir.axis), the site's gate is then refined per
    channel (channels.channel_gates). `error_only`: this site's error-only calibrated refit when already made
    (_refit_key). `start`: an earlier calibrated fit of this site to start from too (fit_sites' refocus)."""
    return fit_job(Job(act, k, res, options or FitOptions(), error_only, start))


def fit_job(job: Job) -> SiteFit:
    """One fit of fit_sites (see fit_site), run in a worker, with its wall time."""
    start = time.perf_counter()
    result = _fit_job(job)
    return replace(result, seconds=time.perf_counter() - start)


def _fit_job(job: Job) -> SiteFit:
    act, res, options = job.act, job.res, job.options
    if job.k == AUTO:
        return auto_fit(job)
    k = int(job.k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"K must be in 1..{MAX_K}")
    lo, hi = _range(act, res)
    if res is None or res.seen == 0:
        result = _data_free(act, k, options.spike_penalty)
        return SiteFit(result.params if act.channel_funcs is None else _per_channel(act, result, None),
                       FitSource.DATA_FREE, lo, hi, result.mse, result.max_error, result.mean_spikes, 0)
    samples = res.values
    result = _calibrated(act, k, samples, (lo, hi), job)
    if act.channel_funcs is not None:
        params = _per_channel(act, result, samples)
        mse, max_err, spikes = sample_error(result.params, act.func, samples)
        return SiteFit(params, FitSource.CALIBRATED, lo, hi, mse, max_err, spikes, res.seen)
    if options.per_channel and res.axis is not None:
        lam = absolute_penalty(act, samples, lo, hi, options.spike_penalty)
        params, mse, max_err, spikes = channel_gates(act, result, res, lam, options.range_weight)
        return SiteFit(params, FitSource.PER_CHANNEL, lo, hi, mse, max_err, spikes, res.seen)
    mse, max_err, spikes = sample_error(result.params, act.func, samples)
    return SiteFit(result.params, FitSource.CALIBRATED, lo, hi, mse, max_err, spikes, res.seen)


def auto_fit(job: Job) -> SiteFit:
    """The fit with the smallest K in 4..16 whose MSE (on the site's samples, or its default range) meets the
    target, found by bisection over K (error falls with K); the K = 16 fit when none does."""
    lo, hi = library.K_RANGE.start, library.K_RANGE.stop - 1
    fits: dict[int, SiteFit] = {}

    def at(k: int) -> SiteFit:
        if k not in fits:
            fits[k] = fit_job(Job(job.act, k, job.res, job.options))
        return fits[k]

    target = job.options.target_mse
    if at(hi).mse > target:
        return at(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).mse <= target:
            hi = mid
        else:
            lo = mid + 1
    return at(hi)


def site_k(site: Site, k: int | str | None, k_per_op: Mapping[str, int],
           k_per_site: Mapping[str, int] | None = None) -> int | str:
    """K for one site: its own (a budget's choice), else --k-per-op for its op, else --k (a number, or "auto"),
    else the activation's default."""
    assert site.activation is not None
    if k_per_site and site.name in k_per_site:
        return k_per_site[site.name]
    op = COMPOSITE if len(site.nodes) > 1 else site.op
    if op in k_per_op:
        return k_per_op[op]
    if k == AUTO:
        return AUTO
    return int(k) if k is not None else site.activation.k


class Job(NamedTuple):
    """One fit: the site's function, K, samples and options (spike_penalty already the site's share of it), with
    the error-only refit and the earlier fit to start from, when there are."""

    act: Activation
    k: int | str
    res: Reservoir | None
    options: FitOptions
    error_only: GateParams | None = None
    start: GateParams | None = None


Key = tuple[str, str, str] | str  # sites with the same key share one fit


# Error-only calibrated refits made in this process, by _refit_key: a penalised refit starts from the error-only
# one, so converting the same calibration again with a spike penalty (a penalty sweep) does not redo it.
_REFITS: dict[tuple[object, ...], GateParams] = {}


def _refit_key(job: Job) -> tuple[object, ...] | None:
    """What an error-only calibrated refit depends on (the samples by digest), or None for a job that makes
    none to reuse (data-free, automatic K, per-channel gates)."""
    act, res, options = job.act, job.res, job.options
    if job.k == AUTO or res is None or res.seen == 0 or act.channel_funcs is not None or options.per_channel:
        return None
    digest = hashlib.blake2b(np.ascontiguousarray(res.values).tobytes(), digest_size=16).hexdigest()
    return (act.label, act.relu_like, int(job.k), options.seed, options.kicks, options.range_weight, REFIT_STARTS,
            _range(act, res), digest)


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


def _jobs(sites: list[Site], reservoirs: dict[str, Reservoir],
          options: FitOptions) -> tuple[dict[str, Key], dict[Key, Job], dict[Key, tuple[object, ...] | None]]:
    """The fit key of every converting site, one job per key (spike penalty spread by _shares) and each job's
    _refit_key."""
    keys: dict[str, Key] = {}
    work: dict[Key, Job] = {}
    seen: list[tuple[Key, int]] = []
    for site in sites:
        if not site.converts or site.activation is None:
            continue
        act, res = site.activation, reservoirs.get(site.samples)  # none where calibration cannot reach
        kk = site_k(site, options.k, options.k_per_op, options.k_per_site)
        key: Key = (site.samples, act.label, str(kk))
        if act.channel_funcs is not None:  # per-channel slopes: never shared
            key = site.name
        keys[site.name] = key
        seen.append((key, 0 if res is None else res.seen))
        work.setdefault(key, Job(act, kk, res, options))
    refit_keys = {key: _refit_key(job) for key, job in work.items()}
    if options.spike_penalty:
        shares = _shares(seen)
        work = {key: job._replace(options=replace(options, spike_penalty=options.spike_penalty * shares[key]),
                                  error_only=_REFITS.get(rk) if (rk := refit_keys[key]) else None)
                for key, job in work.items()}
    return keys, work, refit_keys


def fit_sites(sites: list[Site], reservoirs: dict[str, Reservoir], options: FitOptions | None = None,
              refocus: Refocus | None = None) -> dict[str, SiteFit]:
    """One SiteFit per converting site, keyed by site name; sites seeing the same tensor with the same function
    and K share one fit. Fits run in parallel processes (AMOS_ONNX_JOBS, default one per CPU). The spike
    penalty is spread over the sites by their share of the network's gate evaluations (_shares), so it trades
    the network's mean spikes per gate. per_channel: one gate per channel where the calibration kept channels,
    else one per site. refocus: refit only some sites' fits, with more moves (pipeline.fit_plan's focus)."""
    options = options or FitOptions()
    if refocus is None:
        return fit_sites_at(sites, reservoirs, options, [options.k_per_site])[0]
    keys, work, _ = _jobs(sites, reservoirs, options)
    first = {key: refocus.earlier[name] for name, key in keys.items() if name in refocus.sites}
    work = {key: job._replace(options=replace(job.options, kicks=refocus.kicks),
                              # per-channel gates cannot start the site's refit
                              start=first[key].params if first[key].params.axis is None else None,
                              k=first[key].params.k if job.k == AUTO else job.k)
            for key, job in work.items() if key in first}
    results = _fitted(work)
    return _logged({name: results[key] if key in results else refocus.earlier[name] for name, key in keys.items()})


def fit_sites_at(sites: list[Site], reservoirs: dict[str, Reservoir], options: FitOptions,
                 choices: Sequence[Mapping[str, int]],
                 keep: Sequence[Collection[str]] | None = None) -> list[dict[str, SiteFit]]:
    """fit_sites for each choice of K per site (options.k_per_site), their fits in one pool of workers: a fit
    whose key (tensor, function, K) recurs across the choices, a site each choice leaves at its own K, is made
    once. `keep`: per choice, the sites whose fits are made and returned (default every site; the spike
    penalty's shares are the network's either way)."""
    plans = [_jobs(sites, reservoirs, replace(options, k_per_site=choice)) for choice in choices]
    if keep is not None:
        plans = [_kept(names, *plan) for names, plan in zip(keep, plans)]
    work: dict[Key, Job] = {}
    for _, jobs, _ in plans:  # a key's job is the same in every choice (the spike penalty's share included)
        for key, job in jobs.items():
            work.setdefault(key, job)
    results = _fitted(work)
    if not options.spike_penalty:
        _REFITS.update({rk: results[key].params for _, _, keys in plans for key, rk in keys.items() if rk is not None})
    return [_logged({name: results[key] for name, key in keys.items()}) for keys, _, _ in plans]


def _fitted(work: dict[Key, Job]) -> dict[Key, SiteFit]:
    """Every job's fit, in worker processes, the largest K first (so that the last fits to finish are small ones
    and no worker waits long at the end); each fit is seeded alone, so the order changes no result."""
    order = sorted(work, key=lambda key: -MAX_K - 1 if work[key].k == AUTO else -int(work[key].k))
    return dict(zip(order, fork_map(fit_job, [work[key] for key in order])))


def _kept(names: Collection[str], keys: dict[str, Key], jobs: dict[Key, Job],
          refits: dict[Key, tuple[object, ...] | None]) -> tuple[dict[str, Key], dict[Key, Job],
                                                                dict[Key, tuple[object, ...] | None]]:
    """_jobs' plan cut to the sites `names`."""
    keys = {name: key for name, key in keys.items() if name in names}
    used = dict.fromkeys(keys.values())
    return keys, {key: jobs[key] for key in used}, {key: refits[key] for key in used}


def _logged(fits: dict[str, SiteFit]) -> dict[str, SiteFit]:
    for name, fit_ in fits.items():
        log.info("%s: K=%d %s, mse %.3g, fitted in %.2f s", name, fit_.params.k, fit_.source, fit_.mse, fit_.seconds)
    return fits
