"""One site's gate: its data-free fit (the library's, cached per process), its fit on the site's calibration
samples (warm-started from the library's gate), refined per channel, or at the smallest K meeting a target."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.find.gates import Activation
from amos_onnx.fit import library
from amos_onnx.fit.chains import fit_chains
from amos_onnx.fit.channels import channel_gates
from amos_onnx.fit.kernel import sample_error
from amos_onnx.fit.search import FitResult, fit, solve_weights
from amos_onnx.gate import MAX_K, GateParams
from amos_onnx.options import AUTO, REFIT_KICKS, FitOptions

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


def site_range(act: Activation, res: Reservoir | None) -> tuple[float, float]:
    """The range a site's gate is fitted over: its calibrated min and max (from 0 for a ReLU-like function, widened
    to at least 1 when they (nearly) meet), else the activation's default range."""
    if res is None or res.seen == 0:
        return act.lo, act.hi
    lo, hi = res.lo, res.hi
    if act.relu_like:
        lo = min(lo, 0.0)
    if hi - lo < 1e-3:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


TOP_K = library.K_RANGE.stop - 1  # the library's largest K: a fit beyond it competes with one at fewer neurons
# ... at K - BEYOND_STEP, TOP_K at least (a chain: K=32's competitor is K=24's fit, whose is K=16's): searches
# over 32 neurons landed above K=24's error on real detector sites (NudeNet: 9.4e-4 against 5.7e-4)
BEYOND_STEP = 8
_DATA_FREE: dict[tuple[str, float, float, bool, int, float, int], FitResult] = {}


def site_chains(act: Activation, res: Reservoir | None, options: FitOptions) -> int:
    """The chains of a site's gate: options.chains, but one for per-channel gates (PRelu's slopes, --per-channel
    where the calibration kept channels)."""
    per_channel = act.channel_funcs is not None or (options.per_channel and res is not None and res.axis is not None)
    return 1 if per_channel else options.chains


def absolute_penalty(act: Activation, samples: np.ndarray | None, lo: float, hi: float, penalty: float) -> float:
    """The fitter's cost per mean spike for a relative `penalty`: the fraction of f's mean square (on the
    samples, else on the range) that one spike per gate may cost in squared error. Scale-free, so one value
    suits every site of a network."""
    if penalty == 0.0:
        return 0.0
    x = samples.astype(np.float64) if samples is not None else np.linspace(lo, hi, 4001)
    return penalty * float(np.mean(act.func(x) ** 2))


def _data_free(act: Activation, k: int, penalty: float = 0.0, chains: int = 1) -> FitResult:
    """Data-free fits depend only on the function (its label), range, K and penalty: fit each once per process.
    Beyond the library's largest K, the fit at K - BEYOND_STEP (TOP_K at least), itself so fitted, competes with
    the search (as _calibrated's does). With a spike penalty the error-only gate at this K (the shipped one, or
    the search's beyond the library) is refitted from itself on the range, and that chain's penalised fit
    competes. Several chains: fit.chains' gate on the range (penalised when there is a penalty)."""
    key = (act.label, act.lo, act.hi, act.relu_like, k, penalty, chains)
    if key not in _DATA_FREE and chains > 1:
        _DATA_FREE[key] = fit_chains(act.func, k, chains, act.lo, act.hi, relu_like=act.relu_like,
                                     spike_penalty=absolute_penalty(act, None, act.lo, act.hi, penalty))
    if key not in _DATA_FREE:
        fewer = [_data_free(act, max(TOP_K, k - BEYOND_STEP), penalty).params] if k > TOP_K else []
        if penalty:
            _DATA_FREE[key] = fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like, kicks=REFIT_KICKS,
                                  keep_starts=REFIT_STARTS, warm=[_data_free(act, k).params], fallback=fewer,
                                  spike_penalty=absolute_penalty(act, None, act.lo, act.hi, penalty))
        else:
            shipped = library.lookup(act, k)
            _DATA_FREE[key] = shipped or fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like, fallback=fewer)
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
    library's largest K, this site's fit at K - BEYOND_STEP (TOP_K at least), itself so fitted, competes with it
    (fit's fallback: a search over many neurons can land worse than one over fewer, and adding neurons must not
    make a gate worse). With a spike penalty, the error-only refit (job.error_only when already made) joins the
    penalised refit's starts, so the penalised refit never returns a gate that the error-only one beats on the
    penalised cost."""
    lo, hi = fit_range
    options = job.options
    shipped = library.lookup(act, k)
    warm = [shipped.params] if shipped is not None else []
    warm += [job.start] if job.start is not None else []
    below = max(TOP_K, k - BEYOND_STEP)
    beyond = ([_calibrated(act, below, samples, fit_range, job._replace(k=below, error_only=None, start=None)).params]
              if k > TOP_K else [])
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
    (sites._refit_key). `start`: an earlier calibrated fit of this site to start from too (fit_sites' refocus)."""
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
    lo, hi = site_range(act, res)
    chains = site_chains(act, res, options)
    if res is None or res.seen == 0:
        result = _data_free(act, k, options.spike_penalty, chains)
        return SiteFit(result.params if act.channel_funcs is None else _per_channel(act, result, None),
                       FitSource.DATA_FREE, lo, hi, result.mse, result.max_error, result.mean_spikes, 0)
    samples = res.values
    if chains > 1:
        lam = absolute_penalty(act, samples, lo, hi, options.spike_penalty)
        result = fit_chains(act.func, k, chains, lo, hi, samples, warm=job.start, relu_like=act.relu_like,
                            spike_penalty=lam, range_weight=options.range_weight, kicks=options.kicks,
                            seed=options.seed, keep_starts=REFIT_STARTS)
    else:
        result = _calibrated(act, k, samples, (lo, hi), job)
    if act.channel_funcs is not None:
        params = _per_channel(act, result, samples)
        mse, max_err, spikes = sample_error(result.params, act.func, samples)
        return SiteFit(params, FitSource.CALIBRATED, lo, hi, mse, max_err, spikes, res.seen)
    if options.per_channel and res.axis is not None:
        lam = absolute_penalty(act, samples, lo, hi, options.spike_penalty)
        params, mse, max_err, spikes = channel_gates(act, result, res, lam, options.range_weight,
                                                     options.channel_kicks, options.seed)
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


class Job(NamedTuple):
    """One fit: the site's function, K, samples and options (spike_penalty already the site's share of it), with
    the error-only refit and the earlier fit to start from, when there are."""

    act: Activation
    k: int | str
    res: Reservoir | None
    options: FitOptions
    error_only: GateParams | None = None
    start: GateParams | None = None
