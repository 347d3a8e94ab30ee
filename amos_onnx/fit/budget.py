"""A time budget: K per site chosen for the network (convert --latency, --spike-budget).

Measured, not guessed: every top-level site is fitted at a few K around the budget's uniform K (more where the
choice sits at the edge of those tried, up to candidates()), and the change of the model's outputs with that
site's gate alone in place (the focus's switched model, on the kept calibration samples) gives each site a
curve of output change against K: the Kullback-Leibler divergence
of the outputs' softmax for a classifier's scores, the relative square error otherwise. The choice minimises the
sum of the chosen points (each site's change taken alone, added up) with the latency (K summed along the deepest
path of gates, paths.SiteGraph) at most the budget and the mean spikes per gate at most the spike budget:
greedily, the raise that buys the most change per step of latency (or per spike) first, raises that cost no
latency (off the critical path) before any, then single moves of K between two sites while they lower the sum.
The uniform K that fits the budget competes, so a budget never predicts worse than it; and measured with every gate
in place, the choice replaces the uniform K only when it moves the outputs less by more than the samples' noise
(change.SIGNIFICANCE standard errors of the paired per-sample difference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from amos_onnx.errors import OptionError
from amos_onnx.find.sites import Site
from amos_onnx.fit import change, focus
from amos_onnx.fit.change import output_change, significantly_lower, standard_error, unit_changes
from amos_onnx.fit.paths import SiteGraph
from amos_onnx.fit.sites import SiteFit, fit_sites_at
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


@dataclass(frozen=True)
class Allocation:
    """K per site, the latency and critical path it gives, its mean spikes per gate, and the predicted output
    change (the sum of each site's measured change at its K) beside that of the uniform K it was judged against."""

    k: dict[str, int]
    latency: int
    critical_path: list[str]
    spikes_per_gate: float
    predicted: float
    uniform: tuple[int, float] | None  # (K, predicted change) of the best uniform K within the budget
    candidates: tuple[int, ...]
    curves: dict[str, dict[int, float]]
    # The outputs' change with every gate in place, measured: (the per-site choice, the uniform K, the standard
    # error of their difference); the uniform K is kept unless the choice measured significantly less
    measured: tuple[float, float, float] | None = None
    uniform_kept: bool = False  # the check kept the uniform K

    def to_dict(self) -> dict[str, object]:
        uniform = None if self.uniform is None else {"k": self.uniform[0], "predicted_change": self.uniform[1]}
        return {"k": self.k, "latency_steps": self.latency, "critical_path": self.critical_path,
                "spikes_per_gate": self.spikes_per_gate, "predicted_change": self.predicted, "uniform": uniform,
                "candidate_k": list(self.candidates),
                "measured_together": None if self.measured is None else self.measured[:2],
                "measured_standard_error": None if self.measured is None else self.measured[2],
                "uniform_kept": self.uniform_kept,
                "curves": {s: {str(k): v for k, v in c.items()} for s, c in self.curves.items()}}

    def lines(self) -> list[str]:
        return [f"budget: {describe(self.to_dict())}"]


def describe(budget: dict) -> str:
    """What a budget chose, from Allocation.to_dict (as the conversion report holds it): the critical path with
    its K, spikes per gate, and the change predicted and measured beside the uniform K's."""
    if not budget["k"]:
        return ("no gate in the top-level graph (If, Loop and Scan bodies run in their node's time): every site "
                "keeps its K")
    path = " -> ".join(f"{s} (K={budget['k'][s]})" for s in budget["critical_path"])
    text = (f"latency {budget['latency_steps']} steps along the critical path {path}; "
            f"{budget['spikes_per_gate']:.2f} spikes per gate; predicted output change "
            f"{budget['predicted_change']:.3g}")
    if budget["uniform"] is not None:
        text += f"; the uniform K={budget['uniform']['k']} within the budget predicts "
        text += f"{budget['uniform']['predicted_change']:.3g}"
    if budget["measured_together"] is not None:
        mine, uniform = budget["measured_together"]
        text += (f"; measured with every gate in place: K per site {mine:.3g}, the uniform K {uniform:.3g}"
                 f" (standard error of the difference {budget['measured_standard_error']:.2g})")
        if budget["uniform_kept"]:
            text += (f"; the uniform K kept: K per site is not lower by {change.SIGNIFICANCE:g} standard errors"
                     if mine < uniform else "; the uniform K kept")
    return text


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
    outer = candidates(options, depth)
    measured = {s.name: s for s in p.sites if s.name in graph.before and s.dtype in focus.MEASURED_TYPES}
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
            lower = widened(windows, chooser, None, outer)
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


def first_window(options: FitOptions, depth: int, outer: tuple[int, ...]) -> list[int]:
    """The K a measured site is first fitted and measured at: with a latency, the budget's uniform K minus
    FIRST[0] to plus FIRST[1] (within candidates()); with a spike budget alone, every candidate."""
    if options.latency is None:
        return list(outer)
    uniform = min(options.latency // depth, MAX_K)
    return [k for k in outer if uniform - FIRST[0] <= k <= uniform + FIRST[1]]


def widened(windows: dict[str, list[int]], chooser: Chooser, allocation: Allocation | None,
            outer: tuple[int, ...]) -> dict[str, list[int]] | None:
    """The windows with the next K of candidates() added where the choice sits at a window's edge; without a
    choice (none was within the spike budget), or when no uniform K within the budgets was found, the next
    smaller K at every free site. None when nothing is added."""
    grown = {name: list(window) for name, window in windows.items()}
    shared = chooser.shared()
    down = allocation is None or (allocation.uniform is None and bool(shared) and shared[0] > outer[0])
    for name in chooser.free:
        window = grown[name]
        k = None if allocation is None else allocation.k[name]
        if (down or k == window[0]) and window[0] > outer[0]:
            window.insert(0, window[0] - 1)
        if k == window[-1] and window[-1] < outer[-1]:
            window.append(window[-1] + 1)
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


class Chooser:
    """K per site within the budgets (latency in steps, mean spikes per gate; None: no bound), minimising the
    summed curves; each site's candidate K are those its curve holds; `pinned` sites (not measurable) keep
    their K."""

    def __init__(self, graph: SiteGraph, curves: dict[str, dict[int, float]], spikes: dict[str, dict[int, float]],
                 weights: dict[str, float], latency: int | None, spike_budget: float | None,
                 pinned: dict[str, int] | None = None, candidates: tuple[int, ...] | None = None) -> None:
        self.graph, self.curves, self.spikes, self.weights = graph, curves, spikes, weights
        self.latency, self.spike_budget, self.pinned = latency, spike_budget, pinned or {}
        self.free = [s for s in graph.order if s not in self.pinned]
        self.ks = {s: tuple(sorted(curves[s])) for s in graph.order}
        # the K a site may take (reported), of which each site's curve holds those tried
        self.candidates = candidates or tuple(sorted({k for s in graph.order for k in self.ks[s]}))

    def spikes_per_gate(self, ks: dict[str, int]) -> float:
        total = sum(self.weights.get(s, 0.0) for s in ks)
        return sum(self.weights.get(s, 0.0) * self.spikes[s][k] for s, k in ks.items()) / total if total > 0 else 0.0

    def change(self, ks: dict[str, int]) -> float:
        return sum(self.curves[s][k] for s, k in ks.items())

    def feasible(self, ks: dict[str, int]) -> bool:
        return self._spent(self.graph.latency(ks), self.spikes_per_gate(ks)) is not None

    def start(self) -> dict[str, int]:
        """The cheapest choice: each site's smallest K, or where that spends too many spikes, each site's K with
        the fewest; a one-line error when even that is over the spike budget."""
        ks = {s: self.pinned.get(s, self.ks[s][0]) for s in self.graph.order}
        if self.feasible(ks):
            return ks
        fewest = {**ks, **{s: min(self.ks[s], key=self._spikes_of(s)) for s in self.free}}
        if self.feasible(fewest):
            return fewest
        every = sorted({k for s in self.free for k in self.ks[s]})
        raise OptionError(f"--spike-budget {self.spike_budget}: the fewest spikes per gate reachable with K in "
                          f"{every[0]}..{every[-1]} are {self.spikes_per_gate(fewest):.3f}")

    def _spikes_of(self, site: str) -> Callable[[int], tuple[float, int]]:
        return lambda k: (self.spikes[site][k], k)

    def _raise(self, ks: dict[str, int]) -> dict[str, int]:
        """Single-site moves that lower the change, free ones (no budget spent) first, then the best change per
        budget spent, until none fits. A raise's latency comes from the steps around the site (SiteGraph.around),
        its spikes from the site's share: each move costs O(1), not a walk of the graph."""
        total = sum(self.weights.get(s, 0.0) for s in ks)
        while True:
            latency, around = self.graph.latency(ks), self.graph.around(ks)
            numerator = sum(self.weights.get(s, 0.0) * self.spikes[s][k] for s, k in ks.items())
            use = self._spent(latency, numerator / total if total > 0 else 0.0)
            assert use is not None  # every choice made so far is within the budgets
            best, best_score = None, (False, 0.0)
            for s in self.free:
                weight, (before, after) = self.weights.get(s, 0.0), around[s]
                for k in self.ks[s]:
                    gain = self.curves[s][ks[s]] - self.curves[s][k]
                    if k == ks[s] or gain <= 0:
                        continue
                    steps = max(latency, before + k + after) if k > ks[s] else self.graph.latency({**ks, s: k})
                    spikes = numerator + weight * (self.spikes[s][k] - self.spikes[s][ks[s]])
                    spent = self._spent(steps, spikes / total if total > 0 else 0.0)
                    if spent is None:
                        continue
                    spent -= use
                    score = (spent <= 0, gain if spent <= 0 else gain / spent)
                    if score > best_score:
                        best, best_score = (s, k), score
            if best is None:
                return ks
            ks = {**ks, best[0]: best[1]}

    def _spent(self, latency: int, spikes: float) -> float | None:
        """The budgets' share a choice of this latency and mean spikes per gate spends (each over its bound), None
        when it is over one."""
        if self.latency is not None and latency > self.latency:
            return None
        if self.spike_budget is not None and spikes > self.spike_budget * (1 + 1e-12):
            return None
        return (latency / self.latency if self.latency else 0.0) + (spikes / self.spike_budget if self.spike_budget
                                                                     else 0.0)

    def _exchange(self, ks: dict[str, int], rounds: int = 50) -> dict[str, int]:
        """Moves of one candidate step at two sites at once (one down, one up) while they lower the change; the
        budgets are checked only for moves that do."""
        for _ in range(rounds):
            now, improved = self.change(ks), False
            for a in self.free:
                for b in self.free:
                    ia, ib = self.ks[a].index(ks[a]) - 1, self.ks[b].index(ks[b]) + 1
                    if a == b or ia < 0 or ib >= len(self.ks[b]):
                        continue
                    down, up = self.ks[a][ia], self.ks[b][ib]
                    delta = (self.curves[a][down] - self.curves[a][ks[a]] + self.curves[b][up] - self.curves[b][ks[b]])
                    if delta >= 1e-12 * abs(now):
                        continue
                    trial = {**ks, a: down, b: up}
                    if self.change(trial) < now - 1e-15 * abs(now) and self.feasible(trial):
                        ks, now, improved = trial, self.change(trial), True
            if not improved:
                return ks
        return ks

    def allocation(self) -> Allocation:
        """The choice, or the best uniform K within the budgets (among the K every free site has) when its summed
        curves are lower."""
        ks = self._exchange(self._raise(self.start()))
        uniform = None
        for k in self.shared():
            trial = self.uniform_k(k)
            if self.feasible(trial) and (uniform is None or self.change(trial) <= uniform[1]):
                uniform = (k, self.change(trial))
        if uniform is not None and uniform[1] < self.change(ks):
            ks = self.uniform_k(uniform[0])
        return self.finish(ks, uniform)

    def shared(self) -> list[int]:
        """The candidate K of every free site."""
        return sorted(set.intersection(*(set(self.ks[s]) for s in self.free))) if self.free else []

    def uniform_k(self, k: int) -> dict[str, int]:
        return {s: self.pinned.get(s, k) for s in self.graph.order}

    def finish(self, ks: dict[str, int], uniform: tuple[int, float] | None,
               measured: tuple[float, float, float] | None = None) -> Allocation:
        return Allocation(ks, self.graph.latency(ks), self.graph.critical_path(ks), self.spikes_per_gate(ks),
                          self.change(ks), uniform, self.candidates, self.curves, measured)
