"""The fit stage: gate parameters for every converting site (fit.site_fit: one site's), on its calibration samples
or data-free; sites that see the same tensor with the same function and K share one fit, made in worker processes."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.find.composite import COMPOSITE
from amos_onnx.find.sites import Site
from amos_onnx.fit.site_fit import REFIT_STARTS, Job, SiteFit, fit_job, site_range
from amos_onnx.gate import MAX_K, GateParams
from amos_onnx.options import AUTO, FitOptions
from amos_onnx.parallel import fork_map

log = logging.getLogger(__name__)


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


Key = tuple[str, str, str] | str  # sites with the same key share one fit


# Error-only calibrated refits made in this process, by _refit_key: a penalised refit starts from the error-only
# one, so converting the same calibration again with a spike penalty (a penalty sweep) does not redo it.
_REFITS: dict[tuple[object, ...], GateParams] = {}


def _refit_key(job: Job) -> tuple[object, ...] | None:
    """What an error-only calibrated refit depends on (the samples by digest), or None for a job that makes
    none to reuse (data-free, automatic K, per-channel gates, gates of several chains)."""
    act, res, options = job.act, job.res, job.options
    if (job.k == AUTO or res is None or res.seen == 0 or act.channel_funcs is not None or options.per_channel
            or options.chains > 1):
        return None
    return (act.label, act.relu_like, int(job.k), options.seed, options.kicks, options.range_weight, REFIT_STARTS,
            site_range(act, res), res.digest())


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


def site_shares(sites: list[Site], reservoirs: Mapping[str, Reservoir]) -> dict[str, float]:
    """Each converting site's own share of the network's gate evaluations (_shares, site by site): what a refit of
    that site alone (compensate.sequential) pays of the spike penalty, as the first fits pay theirs."""
    seen: list[tuple[Key, int]] = [(site.name, res.seen if (res := reservoirs.get(site.samples)) is not None else 0)
                                   for site in sites if site.converts and site.activation is not None]
    return {str(name): share for name, share in _shares(seen).items()}


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
    """Every job's fit, in worker processes. One tensor's fits with one function at several K (a budget's) go to
    one worker, one after another, and share the sets a fit makes whatever K (fit.grids); the groups with the most
    neurons first and the largest K first within them (so that the last fits to finish are small ones and no
    worker waits long at the end). Each fit is seeded alone, so the order changes no result."""
    def neurons(key: Key) -> int:
        return MAX_K + 1 if work[key].k == AUTO else int(work[key].k)

    groups: dict[Key | tuple[str, str], list[Key]] = {}
    for key in sorted(work, key=lambda key: -neurons(key)):
        groups.setdefault(key[:2] if isinstance(key, tuple) else key, []).append(key)
    order = sorted(groups.values(), key=lambda keys: -sum(map(neurons, keys)))
    fits = fork_map(_fit_group, [[work[key] for key in keys] for keys in order])
    return {key: fit_ for keys, group in zip(order, fits) for key, fit_ in zip(keys, group)}


def _fit_group(jobs: list[Job]) -> list[SiteFit]:
    return [fit_job(job) for job in jobs]


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
