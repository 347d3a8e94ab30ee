"""Sequential refits: each gate fitted, level by level, to what the original network wanted from the inputs it
really gets once every site before it is spiking.

The first pass fits every gate on its site's original inputs x against act(x) ("parallel" calibration), so each
gate passes on the errors of the gates before it. Here the model is walked level by level (compensate.walk over
the focus's switched model, one segment per site level) in two streams, the original (every switch off) and the
spiking (every site refitted so far spiking). At each level, a site's inputs in both streams pair up position
by position: x~ (spiking) and x (original). The gate is refitted on x~ against E[act(x) | x~]: act(x~) plus the
mean of act(x) - act(x~) over the pairs in x~'s quantile bin (AdaRound's asymmetric reconstruction, QDrop; in
least squares, fitting the pairs and fitting their conditional mean are the same problem), from its
first fit as a warm start. A gate so learns to undo part of the error it is handed. Sites of the first level see
the original inputs: their refit is a searched one on their own samples (a ReLU's first fit is a rounding
ladder, searched here too). A per-channel site's gates are refitted one per gate its channels share, each on the
pairs of those channels, over at least the range the gate was fitted for: a refit on the pairs' range alone
spends its steps where the kept samples lie, which on Fashion-MNIST's test images moved the outputs up to half as
much but on NudeNet's other images lost 20 of 31 boxes. With a spike penalty, each refit pays its site's share
of it (fit.sites.site_shares), as the first fits pay theirs: the whole penalty at every refit had a large early
site's refit spend more spikes than its first fit, a squeeze-excitation gate's fewer.

With weight reconstruction (the default compensation), the layers after each level's gates are refitted in the
same walk before the next level's gates (compensate.reconstruct.level_refits on the spiking stream), so every
gate is refitted on the inputs it will get in the reconstructed model. Refitted against the unreconstructed
inputs instead, the gates undid errors the reconstruction then undid again: per-channel GELU gates at K=5 moved
the Fashion-MNIST outputs more than without any refit at each of five seeds. The walk then holds the
reconstruction's samples (reconstruct.SAMPLES) and the model's judged outputs, and at its end the layers' refits
are those reconstruct() would make for the final gates: they are judged as it judges them (the outputs' error with
over without them) and left on the plan, where compensate() takes them for these fits instead of walking again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.compensate import reconstruct
from amos_onnx.compensate.bias import (
    SAMPLES,  # the walk's samples without reconstruction (bias correction's)
    end_ratio,
)
from amos_onnx.compensate.layers import Layer, layers
from amos_onnx.compensate.targets import find_targets, site_levels
from amos_onnx.compensate.walk import Walk
from amos_onnx.data.inputs import model_layout, sliceable
from amos_onnx.find.gates import Activation
from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.chains import fit_chains
from amos_onnx.fit.channels import CHANNEL_MARGIN, CHANNEL_MIN_SAMPLES
from amos_onnx.fit.kernel import sample_error
from amos_onnx.fit.search import fit
from amos_onnx.fit.site_fit import REFIT_STARTS, FitSource, SiteFit, absolute_penalty
from amos_onnx.fit.sites import site_shares
from amos_onnx.gate import GateParams
from amos_onnx.options import CompensationKind, FitOptions
from amos_onnx.parallel import fork_map
from amos_onnx.rewrite.segments import split

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

PAIRS = 100_000  # pairs per site a refit sees at most (a seeded draw of positions)
BINS = 32  # quantile bins of x~ the conditional mean is taken over


@dataclass(frozen=True)
class Conditional:
    """E[act(x) | x~] as a function of x~: act(x~) plus the mean of act(x) - act(x~) over the pairs in x~'s bin,
    linear between the bins' centres and flat beyond them. The difference is small and smooth where the gates
    before are good, so the bins' resolution limits only it, not the activation's curve."""

    func: Callable[[np.ndarray], np.ndarray]
    x: np.ndarray
    shift: np.ndarray

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        return np.asarray(self.func(v) + np.interp(v, self.x, self.shift))


def conditional(act: Activation, spiking: np.ndarray, original: np.ndarray) -> Conditional:
    """The conditional mean of act(original) given spiking, over BINS bins of equal counts."""
    order = np.argsort(spiking, kind="stable")
    x = spiking[order]
    shift = act.func(original[order]) - act.func(x)
    edges = np.unique(np.linspace(0, x.size, BINS + 1).astype(np.int64))
    sums = np.add.reduceat(np.stack([x, shift]), edges[:-1], axis=1)
    counts = np.diff(edges)
    return Conditional(act.func, sums[0] / counts, sums[1] / counts)


@dataclass(frozen=True)
class Refit:
    """One gate's sequential refit: the site's function, the pairs' target and inputs, the gate it starts from
    (its first fit's); for a per-channel site, the channels that gate serves (rows of the site's parameters)."""

    act: Activation
    target: Conditional
    samples: np.ndarray
    start: GateParams
    options: FitOptions
    rows: np.ndarray | None = None
    covered: tuple[float, float] = (np.inf, -np.inf)


@dataclass(frozen=True)
class Refitted:
    """A refit's gate (its start where the inputs span too little to refit), its range and, on its pairs, its
    error against the target and mean spikes."""

    params: GateParams
    changed: bool
    lo: float
    hi: float
    mse: float
    max_error: float
    spikes: float
    pairs: int


def refit(job: Refit) -> Refitted:
    """A gate refitted on x~ against the conditional target, warm-started from its first fit."""
    lo, hi = float(job.samples.min()), float(job.samples.max())
    if job.act.relu_like:
        lo = min(lo, 0.0)
    lo, hi = min(lo, job.covered[0]), max(hi, job.covered[1])  # never less than a per-channel start covered
    params, changed = job.start, False
    if hi - lo >= 1e-3:
        penalty = absolute_penalty(job.act, job.samples, lo, hi, job.options.spike_penalty)
        search: dict[str, Any] = dict(kicks=job.options.kicks, seed=job.options.seed, keep_starts=REFIT_STARTS,
                                      spike_penalty=penalty, range_weight=job.options.range_weight)
        params = (fit_chains(job.target, job.start.k, job.start.chains, lo, hi, job.samples, warm=job.start, **search)
                  if job.start.chains > 1 else fit(job.target, job.start.k, lo, hi, job.samples, warm=[job.start],
                                                   **search)).params
        changed = True
    return Refitted(params, changed, lo, hi, *sample_error(params, job.target, job.samples), job.samples.size)


def refitted(first: SiteFit, jobs: list[Refit], results: list[Refitted]) -> SiteFit:
    """A site's fit after its refits: one gate's, or a per-channel site's rows replaced by their group's refitted
    gate (error and spikes over all its pairs); the first fit where nothing was refitted."""
    if not any(r.changed for r in results):
        return first
    n = sum(r.pairs for r in results)
    params = results[0].params
    if first.params.axis is not None:
        arrays = [np.array(a) for a in (first.params.thresholds, first.params.resets, first.params.weights)]
        for job, result in zip(jobs, results):
            for array, gate in zip(arrays, (result.params.thresholds, result.params.resets, result.params.weights)):
                array[job.rows] = gate
        params = GateParams(arrays[0], arrays[1], arrays[2], axis=first.params.axis)
    return replace(first, params=params, source=FitSource.SEQUENTIAL, lo=min(r.lo for r in results),
                   hi=max(r.hi for r in results), mse=sum(r.mse * r.pairs for r in results) / n,
                   max_error=max(r.max_error for r in results),
                   mean_spikes=sum(r.spikes * r.pairs for r in results) / n)


def refittable(site: Site, fit_: SiteFit | None) -> bool:
    """Whether a site gets a sequential refit: a calibrated gate (one per site or per channel) of an activation
    that is one function for every channel, in the top-level graph."""
    return (site.converts and not site.graph and fit_ is not None and fit_.calibrated
            and site.activation is not None and site.activation.channel_funcs is None)


def sequential(p: Plan, fits: dict[str, SiteFit],
               options: FitOptions | None = None) -> tuple[dict[str, SiteFit], int]:
    """The plan's fits with every refittable site refitted sequentially (see the module text), with `options`
    (default: the plan's), on the plan's first kept calibration samples (focus.first_samples: bias.SAMPLES of
    them, reconstruct.SAMPLES when the plan reconstructs; fewer when their tensors outgrow walk.WALK_BYTES); with
    the number of samples the last level saw. When the plan's compensation is weight reconstruction, the layers
    after each level's gates are refitted on the way (reconstruct.level_refits, as reconstruct() does) before the
    next level's gates are, so those are refitted on the inputs they will get in the reconstructed model; the
    refits are left on the plan (Plan.walked) for compensate() with the fits returned."""
    options = options or p.options.fit
    p.walked = None
    sites = [s for s in p.sites if s.converts and not s.graph and s.name in fits]
    tensor_level, site_level = site_levels(p.model, sites)
    chosen = [s for s in sites if refittable(s, fits[s.name])]
    if not chosen or not p.feeds:
        return fits, 0
    fits = dict(fits)
    found = _layers(p, sites, tensor_level)
    base = p.model
    if found:  # the model the switched model is built again from: it takes the refitted weights too
        base = onnx.ModelProto()
        base.CopyFrom(p.model)
    mixed, switches = focus.switched_model(base, sites, fits, p.options.emit, p.judged)
    levels = sorted(set(site_level.values()))
    kept = focus.first_samples(p.feeds, reconstruct.SAMPLES if found else SAMPLES, sliceable(p.model, p.axes))
    walk = Walk(mixed, split(mixed, tensor_level, levels, {s.input for s in chosen} | {ly.input for ly in found}),
                [model_layout(feed, p.axes) for feed in kept], ["original", "spiking"],
                [name for name, _ in p.judged] if found else [], f"{p.model_path} (sequential refits)",
                p.model_path.parent)
    off = {switch: np.array(False) for switch in switches.values()}
    on = {switch: np.array(True) for switch in switches.values()}
    rng, layer_rng = np.random.default_rng(options.seed), np.random.default_rng(p.options.fit.seed)
    shares = site_shares(p.sites, p.reservoirs) if options.spike_penalty else {}
    walked: list[reconstruct.Refit] = []
    for part in range(len(walk.segments)):
        want = walk.run(part, "original", off)
        got = None
        if found and walk.samples >= reconstruct.MIN_SAMPLES:  # this level's layers, as reconstruct() refits them
            done, got = reconstruct.level_refits(walk, part, [ly for ly in found if ly.target.level == part],
                                                 want, on, layer_rng, "spiking")
            reconstruct.write(base, done)
            walked += done
        here = [s for s in chosen if site_level[s.name] == part + 1]
        if here:
            handed = walk.run(part, "spiking", off)  # the sites before spiking, this level's not yet
            jobs = {s.name: _job(s, fits[s.name], walk.seen("spiking", handed, s.input),
                                 walk.seen("original", want, s.input),
                                 replace(options, spike_penalty=options.spike_penalty * shares.get(s.name, 1.0)),
                                 rng, p.reservoirs.get(s.samples)) for s in here}
            results = iter(fork_map(refit, [job for site_jobs in jobs.values() for job in site_jobs]))
            for name, site_jobs in jobs.items():
                fits[name] = refitted(fits[name], site_jobs, [next(results) for _ in site_jobs])
            walk.use(focus.switched_model(base, sites, fits, p.options.emit, p.judged)[0])  # the gates changed
            got = None
        walk.store(part, "original", want)
        walk.store(part, "spiking", got if got is not None else walk.run(part, "spiking", on))
        walk.trim()
    if found and walk.samples >= reconstruct.MIN_SAMPLES:  # every level's layers refitted, as reconstruct() would
        p.walked = (dict(fits), _judged(p, sites, fits, tensor_level, walk, kept, walked, len(found)))
    return fits, walk.samples


def _judged(p: Plan, sites: list[Site], fits: dict[str, SiteFit], tensor_level: dict[str, int], walk: Walk,
            kept: list[dict[str, np.ndarray]], refits: list[reconstruct.Refit],
            found: int) -> reconstruct.Reconstruction:
    """The walk's layer refits judged as reconstruct() judges its own: the outputs' error of the spiking stream
    (final gates, refitted layers) over that of the final gates with the layers as they were (one run of that
    model on the feeds the walk still holds), both against the original stream's."""
    results = [name for name, _ in p.judged]
    model, switches = focus.switched_model(p.model, sites, fits, p.options.emit, p.judged)
    feeds = [model_layout(feed, p.axes) for feed in kept[:len(walk.counts)]]
    plain = Walk(model, split(model, tensor_level, [], set()), feeds, ["plain"], results,
                 f"{p.model_path} (sequential refits)", p.model_path.parent)
    outputs = plain.finish(0, "plain", {switch: np.array(True) for switch in switches.values()}, results)
    return reconstruct.Reconstruction(refits, found, walk.samples, end_ratio(walk, "spiking", results, outputs))


def _layers(p: Plan, sites: list[Site], tensor_level: dict[str, int]) -> list[Layer]:
    """The layers after the gates that the plan's compensation refits: none unless it is weight reconstruction
    and the model has outputs to judge the refits by."""
    if p.options.fit.compensation(p.calibration is not None) is not CompensationKind.RECONSTRUCT or not p.judged:
        return []
    return layers(p.model, find_targets(p.model, sites, tensor_level))


def _job(site: Site, first: SiteFit, spiking: list[np.ndarray], original: list[np.ndarray], options: FitOptions,
         rng: np.random.Generator, res: Reservoir | None = None) -> list[Refit]:
    """A site's refits on PAIRS of its positions, drawn at random (seeded) from every feed: one, or for a
    per-channel site one per gate its channels share (_shared_rows) with CHANNEL_MIN_SAMPLES pairs or more, over
    at least the range that gate was fitted for (_group_range: fresh inputs of those channels reach it); none
    without two finite pairs."""
    x_tilde = np.concatenate([np.asarray(a, np.float64).ravel() for a in spiking])
    x = np.concatenate([np.asarray(a, np.float64).ravel() for a in original])
    axis = first.params.axis
    channel = None if axis is None else np.concatenate([_channel_of(np.shape(a), axis) for a in spiking])
    keep = np.isfinite(x_tilde) & np.isfinite(x)
    x_tilde, x = x_tilde[keep], x[keep]
    channel = None if channel is None else channel[keep]
    if x.size > PAIRS:
        chosen = rng.choice(x.size, size=PAIRS, replace=False)
        x_tilde, x = x_tilde[chosen], x[chosen]
        channel = None if channel is None else channel[chosen]
    act = site.activation
    assert act is not None
    if channel is None:
        return [Refit(act, conditional(act, x_tilde, x), x_tilde, first.params, options)] if x.size >= 2 else []
    jobs = []
    for rows, gate in _shared_rows(first.params):
        mine = np.isin(channel, rows)
        if np.count_nonzero(mine) >= CHANNEL_MIN_SAMPLES:
            jobs.append(Refit(act, conditional(act, x_tilde[mine], x[mine]), x_tilde[mine], gate, options, rows,
                              _group_range(res, rows, first)))
    return jobs


def _group_range(res: Reservoir | None, rows: np.ndarray, first: SiteFit) -> tuple[float, float]:
    """The range a per-channel group's first fit covered (channels.channel_gates): its channels' exact range,
    widened by CHANNEL_MARGIN of its width on each side, within the site's; the site's without its channels'."""
    if res is None or res.channel_count != first.params.channels:
        return first.lo, first.hi
    lo, hi = float(res.channel_lo[rows].min()), float(res.channel_hi[rows].max())
    margin = CHANNEL_MARGIN * (hi - lo)
    return max(lo - margin, first.lo), min(hi + margin, first.hi)


def _channel_of(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The channel (index along `axis`) of every flat position of an array of this shape."""
    axis %= len(shape)
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return (np.arange(int(np.prod(shape, dtype=np.int64))) // inner) % shape[axis]


def _shared_rows(params: GateParams) -> list[tuple[np.ndarray, GateParams]]:
    """A per-channel gate's distinct gates, each with the channels (rows) that share it."""
    rows = np.concatenate([params.thresholds, params.resets, params.weights], axis=1)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    k = params.k
    return [(np.flatnonzero(inverse == g), GateParams(row[:k], row[k:2 * k], row[2 * k:]))
            for g, row in enumerate(distinct)]


def sequential_notes(fits: dict[str, SiteFit]) -> list[str]:
    """What the sequential refits did, when they did."""
    refitted = [f for f in fits.values() if f.source is FitSource.SEQUENTIAL]
    if not refitted:
        return []
    return [f"sequential refits: {len(refitted)} of {len(fits)} gates refitted level by level on the inputs they get "
            f"with the sites before them spiking, against the original network's outputs there"]
