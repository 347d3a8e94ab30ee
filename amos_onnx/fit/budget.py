"""A time budget: K per site chosen for the network (convert --latency, --spike-budget).

Measured, not guessed: every top-level site is fitted at a few K around the budget's uniform K (more where the
choice sits at the edge of those tried, up to candidates()), and the change of the model's outputs with that
site's gate alone in place (the focus's switched model, on the kept calibration samples; fit.change: the
Kullback-Leibler divergence of the outputs' softmax for a classifier's scores, the relative square error otherwise)
gives each site a curve of output change against K. fit.choose picks K per site from the curves within the
budgets; where a spike budget cannot be met even at the smallest K tried, the windows go below (lowered: a latency
is a bound, and smaller K spend fewer spikes). Measured then with every gate in place, the choice replaces the
uniform K within the budgets only when it moves the outputs less by more than the samples' noise
(change.SIGNIFICANCE standard errors of the paired per-sample difference).
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from amos_onnx.errors import OptionError
from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.change import MEASURED_TYPES, output_change, significantly_lower, standard_error, unit_changes
from amos_onnx.fit.choose import Allocation, Chooser
from amos_onnx.fit.paths import SiteGraph
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.fit.sites import fit_sites_at
from amos_onnx.gate import MAX_K
from amos_onnx.options import FitOptions

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

BELOW, ABOVE = 2, 4  # candidate K: from the budget's uniform K minus BELOW to plus ABOVE
FIRST = 1, 2  # the K first tried at a site: from the budget's uniform K minus FIRST[0] to plus FIRST[1]
# Measuring every site at every candidate K sees at most this many times the calibration's samples in all (the
# focus's measure sees FOCUS_PASSES times): the curves rank K within a site, on the same samples.
PASSES = 2
SPIKE_KS = range(2, 9)  # candidate K with a spike budget alone


def candidates(options: FitOptions, depth: int) -> tuple[int, ...]:
    """The K each site is measured at: around the uniform K that fits the latency, else SPIKE_KS."""
    if options.latency is None:
        return tuple(SPIKE_KS)
    uniform = min(options.latency // depth, MAX_K)
    return tuple(range(max(1, uniform - BELOW), min(MAX_K, uniform + ABOVE) + 1))


def allocate_plan(p: Plan, options: FitOptions) -> tuple[Allocation, dict[str, SiteFit]]:
    """The plan's allocation and the fits at its K (with `options`): each site fitted and measured at the K of
    its window (first_window), the windows widened where the choice sits at their edge (widened) and the choice
    made again, until it sits inside every window or at the edge of candidates()."""
    graph = SiteGraph.of(p.model, p.sites)
    depth = graph.depth()
    plain = replace(options, latency=None, spike_budget=None)
    if depth == 0:  # no gate in the top-level graph: nothing to choose, every site keeps its K
        return Allocation({}, 0, [], 0.0, 0.0, None, (), {}), fit_sites_at(p.sites, p.reservoirs, plain, [{}])[0]
    if options.latency is not None and options.latency < depth:
        raise OptionError(f"--latency {options.latency}: the smallest reachable latency of {p.model_path} is {depth} "
                          f"steps (K=1 at each of the {depth} gates on its deepest path)")
    check_measurable(p.judged, p.model, p.model_path, options)
    outer = candidates(options, depth)
    measured = {s.name: s for s in p.sites if s.name in graph.before and s.dtype in MEASURED_TYPES}
    pinned = {name: outer[min(len(outer) - 1, BELOW)] for name in graph.order if name not in measured}
    windows = {name: [pinned[name]] if name in pinned else first_window(options, depth, outer) for name in graph.order}
    weights = {name: (p.reservoirs[s.samples].seen / max(p.samples, 1) if s.samples in p.reservoirs else 0.0)
               for s in p.sites if (name := s.name) in graph.before}
    tried = Tried(p, graph, measured, plain, runs=len(measured) * len(outer))
    while True:
        tried.add(windows)
        chooser = Chooser(graph, tried.curves, tried.spikes, weights, options.latency, options.spike_budget, pinned,
                          outer)
        try:
            allocation = chooser.allocation()
        except OptionError:  # over the spike budget at every site's smallest K: lower K first, where there are
            lower = widened(windows, chooser, None, outer) or lowered(windows, chooser, options.spike_budget)
            if lower is None:
                raise
            windows = lower
            continue
        wider = widened(windows, chooser, allocation, outer)
        if wider is None:
            break
        windows = wider
    chosen = tried.at(allocation.k)
    if allocation.uniform is None or allocation.k == chooser.uniform_k(allocation.uniform[0]):
        return allocation, chosen
    # Measured together: the choice against the uniform K within the budget, every gate in place at once.
    k = allocation.uniform[0]
    at_k = tried.at(chooser.uniform_k(k))
    (mine, uniform), _ = focus.site_effects(p, list(measured.values()), [chosen, at_k], unit_changes,
                                            passes=PASSES, groups={"all": frozenset(measured)})
    mine_all, uniform_all = mine["all"], uniform["all"]
    allocation = replace(allocation, measured=(float(mine_all.sum()), float(uniform_all.sum()),
                                               standard_error(mine_all, uniform_all)))
    if not significantly_lower(mine_all, uniform_all):
        return replace(chooser.finish(chooser.uniform_k(k), allocation.uniform, allocation.measured),
                       uniform_kept=True), at_k
    return allocation, chosen


def check_measurable(judged: list[tuple[str, int]], model: onnx.ModelProto, model_path: Path,
                     options: FitOptions) -> None:
    """A one-line error when a budget cannot measure the outputs' change: nothing to measure at (`judged`,
    change.judged_tensors of `model`: no floating-point output, and none the outputs are computed from)."""
    if options.budgeted and not judged:
        outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        flag = (f"--latency {options.latency}" if options.latency is not None
                else f"--spike-budget {options.spike_budget}")
        kinds = ", ".join(f"{name} ({onnx.TensorProto.DataType.Name(t).lower()})" for name, t in outputs.items())
        raise OptionError(f"{flag}: {model_path} has no floating-point output, nor one its outputs are computed "
                          f"from, to measure how far each site's gate moves it ({kinds}); choose K with --k, "
                          "--k-per-op or --k auto")


def first_window(options: FitOptions, depth: int, outer: tuple[int, ...]) -> list[int]:
    """The K a measured site is first fitted and measured at: with a latency, the budget's uniform K minus
    FIRST[0] to plus FIRST[1] (within candidates()); with a spike budget alone, every candidate."""
    if options.latency is None:
        return list(outer)
    uniform = min(options.latency // depth, MAX_K)
    return [k for k in outer if uniform - FIRST[0] <= k <= uniform + FIRST[1]]


def widened(windows: dict[str, list[int]], chooser: Chooser, allocation: Allocation | None,
            outer: tuple[int, ...]) -> dict[str, list[int]] | None:
    """The windows with the K next to the choice added where it has not been tried (the next K of candidates()
    where the choice sits at a window's edge; below candidates() only in a window lowered() took there); without a
    choice (none was within the spike budget), or when no uniform K within the budgets was found, the next smaller
    K at every free site. None when nothing is added."""
    grown = {name: list(window) for name, window in windows.items()}
    shared = chooser.shared()
    down = allocation is None or (allocation.uniform is None and bool(shared) and shared[0] > outer[0])
    for name in chooser.free:
        window = grown[name]
        floor = 1 if window[0] < outer[0] else outer[0]
        tries = [window[0] - 1] if down and window[0] > outer[0] else []
        if allocation is not None:
            tries += [allocation.k[name] - 1, allocation.k[name] + 1]
        for k in tries:
            if floor <= k <= outer[-1] and k not in window:
                bisect.insort(window, k)
    return grown if grown != windows else None


def lowered(windows: dict[str, list[int]], chooser: Chooser, spike_budget: float | None) -> dict[str, list[int]] | None:
    """Where no choice is within the spike budget even at the smallest K of candidates() (a latency allows any
    smaller K; a spike budget alone, K=1 too): at every free site a K below its window, as far below as the spikes
    would need if they fell in proportion to K (one less at least, 1 at least). None when every window starts at
    K=1 or there is no spike budget."""
    if spike_budget is None:
        return None
    ratio = spike_budget / max(chooser.spikes_per_gate(chooser.fewest()), 1e-12)
    grown = {name: list(window) for name, window in windows.items()}
    for name in chooser.free:
        window = grown[name]
        if window[0] > 1:
            window.insert(0, max(1, min(window[0] - 1, int(window[0] * ratio))))
    return grown if grown != windows else None


class Tried:
    """The fits and measured curves (output change and mean spikes against K) of each site, at the K tried so far;
    the fits of the sites outside the top-level graph, at their own K, from the first call of add."""

    def __init__(self, p: Plan, graph: SiteGraph, measured: dict[str, Site], options: FitOptions, runs: int) -> None:
        self.p, self.graph, self.measured, self.options, self.runs = p, graph, measured, options, runs
        self.fits: dict[str, dict[int, SiteFit]] = {name: {} for name in graph.order}
        self.curves: dict[str, dict[int, float]] = {name: {} for name in graph.order}
        self.spikes: dict[str, dict[int, float]] = {name: {} for name in graph.order}
        self.others: dict[str, SiteFit] | None = None

    def add(self, windows: dict[str, list[int]]) -> None:
        """Fit and measure every site at the K of its window not tried yet, all fits in one pool of workers and
        each K's measures in one switched model; every call measures on the same samples (runs: the budget's
        whole count, as if every site were measured at every candidate K)."""
        need: dict[int, list[str]] = {}
        for name, window in windows.items():
            for k in window:
                if k not in self.fits[name]:
                    need.setdefault(k, []).append(name)
        if not need:
            return
        choices, keep = [dict.fromkeys(names, k) for k, names in need.items()], list(need.values())
        if self.others is None:  # the first call: the sites outside the top-level graph too, at their own K
            choices.append({})
            keep.append([s.name for s in self.p.sites if s.converts and s.name not in self.fits])
        sets = fit_sites_at(self.p.sites, self.p.reservoirs, self.options, choices, keep)
        for (k, names), fits in zip(need.items(), sets):
            for name in names:
                self.fits[name][k] = fits[name]
                self.spikes[name][k] = fits[name].mean_spikes
                self.curves[name][k] = 0.0  # unless measured below
        if self.others is None:
            self.others = sets[-1]
        # Each switched model holds a gate at every measured site (the same model for every K, so one run without
        # gates serves them all); only the sites new at that K are switched on.
        full = [self.at({name: need_k if name in names else next(iter(self.fits[name]))
                         for name in self.graph.order}) for need_k, names in need.items()]
        wanted = [[n for n in names if n in self.measured] for names in need.values()]
        effects, _ = focus.site_effects(self.p, list(self.measured.values()), full, output_change, passes=PASSES,
                                        wanted=wanted, runs=self.runs)
        for k, by_site in zip(need, effects):
            for name, value in by_site.items():
                self.curves[name][k] = value

    def at(self, ks: dict[str, int]) -> dict[str, SiteFit]:
        """Every site's fit for a choice of K per site (tried), the others at their own K."""
        return {**(self.others or {}), **{name: self.fits[name][k] for name, k in ks.items()}}
