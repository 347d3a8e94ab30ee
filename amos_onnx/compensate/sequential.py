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
ladder, searched here too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from amos_onnx.compensate.bias import SAMPLES  # one sample budget for both walks
from amos_onnx.compensate.targets import site_levels
from amos_onnx.compensate.walk import Walk
from amos_onnx.data.inputs import model_layout, sliceable
from amos_onnx.find.gates import Activation
from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.search import fit
from amos_onnx.fit.sites import REFIT_STARTS, FitSource, SiteFit, absolute_penalty
from amos_onnx.gate import sample_error
from amos_onnx.options import FitOptions
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
    """One site's sequential refit: its function, K, the pairs' target and inputs, its first fit."""

    act: Activation
    target: Conditional
    samples: np.ndarray
    first: SiteFit
    options: FitOptions


def refit(job: Refit) -> SiteFit:
    """A gate refitted on x~ against the conditional target, warm-started from its first fit."""
    lo, hi = float(job.samples.min()), float(job.samples.max())
    if job.act.relu_like:
        lo = min(lo, 0.0)
    if hi - lo < 1e-3:
        return job.first
    penalty = absolute_penalty(job.act, job.samples, lo, hi, job.options.spike_penalty)
    result = fit(job.target, job.first.params.k, lo, hi, job.samples, warm=[job.first.params], kicks=job.options.kicks,
                 seed=job.options.seed, keep_starts=REFIT_STARTS, spike_penalty=penalty)
    mse, max_error, spikes = sample_error(result.params, job.target, job.samples)
    return replace(job.first, params=result.params, source=FitSource.SEQUENTIAL, lo=lo, hi=hi, mse=mse,
                   max_error=max_error, mean_spikes=spikes)


def refittable(site: Site, fit_: SiteFit | None) -> bool:
    """Whether a site gets a sequential refit: a calibrated gate, one per site, in the top-level graph."""
    return (site.converts and not site.graph and fit_ is not None and fit_.calibrated
            and fit_.params.axis is None
            and site.activation is not None and site.activation.channel_funcs is None)


def sequential(p: Plan, fits: dict[str, SiteFit],
               options: FitOptions | None = None) -> tuple[dict[str, SiteFit], int]:
    """The plan's fits with every refittable site refitted sequentially (see the module text), with `options`
    (default: the plan's), on the plan's first kept calibration samples (focus.first_samples, bias.SAMPLES of
    them; fewer when their tensors outgrow walk.WALK_BYTES); with the number of samples the last level saw."""
    options = options or p.options.fit
    sites = [s for s in p.sites if s.converts and not s.graph and s.name in fits]
    tensor_level, site_level = site_levels(p.model, sites)
    chosen = [s for s in sites if refittable(s, fits[s.name])]
    if not chosen or not p.feeds:
        return fits, 0
    fits = dict(fits)
    mixed, switches = focus.switched_model(p.model, sites, fits, p.options.emit, p.judged)
    levels = sorted(set(site_level.values()))
    kept = focus.first_samples(p.feeds, SAMPLES, sliceable(p.model, p.axes))
    walk = Walk(mixed, split(mixed, tensor_level, levels, {s.input for s in chosen}),
                [model_layout(feed, p.axes) for feed in kept], ["original", "spiking"], [],
                f"{p.model_path} (sequential refits)", p.model_path.parent)
    off = {switch: np.array(False) for switch in switches.values()}
    on = {switch: np.array(True) for switch in switches.values()}
    rng = np.random.default_rng(options.seed)
    for part in range(len(walk.segments)):
        want = walk.run(part, "original", off)
        here = [s for s in chosen if site_level[s.name] == part + 1]
        if here:
            handed = walk.run(part, "spiking", off)  # the sites before spiking, this level's not yet
            jobs = {s.name: _job(s, fits[s.name], [h[s.input] for h in handed], [w[s.input] for w in want],
                                 options, rng) for s in here}
            ready = {name: job for name, job in jobs.items() if job is not None}
            fits.update(zip(ready, fork_map(refit, list(ready.values()))))
            walk.use(focus.switched_model(p.model, sites, fits, p.options.emit, p.judged)[0])  # the gates changed
        walk.store(part, "original", want)
        walk.store(part, "spiking", walk.run(part, "spiking", on))
        walk.trim()
    return fits, walk.samples


def _job(site: Site, first: SiteFit, spiking: list[np.ndarray], original: list[np.ndarray], options: FitOptions,
         rng: np.random.Generator) -> Refit | None:
    """A site's refit on PAIRS of its positions, drawn at random (seeded) from every feed; None without two
    finite pairs."""
    x_tilde = np.concatenate([np.asarray(a, np.float64).ravel() for a in spiking])
    x = np.concatenate([np.asarray(a, np.float64).ravel() for a in original])
    keep = np.isfinite(x_tilde) & np.isfinite(x)
    x_tilde, x = x_tilde[keep], x[keep]
    if x.size > PAIRS:
        chosen = rng.choice(x.size, size=PAIRS, replace=False)
        x_tilde, x = x_tilde[chosen], x[chosen]
    if x.size < 2:
        return None
    assert site.activation is not None
    return Refit(site.activation, conditional(site.activation, x_tilde, x), x_tilde, first, options)


def sequential_notes(fits: dict[str, SiteFit]) -> list[str]:
    """What the sequential refits did, when they did."""
    refitted = [f for f in fits.values() if f.source is FitSource.SEQUENTIAL]
    if not refitted:
        return []
    return [f"sequential refits: {len(refitted)} of {len(fits)} gates refitted level by level on the inputs they get "
            f"with the sites before them spiking, against the original network's outputs there"]
