"""The choice of K per site under a time budget (fit.budget measures the curves it chooses from) and what it
chose (Allocation).

The choice minimises the sum of the chosen points of each site's curve (its change of the outputs, measured alone)
with the latency (K summed along the deepest path of gates, paths.SiteGraph) at most the budget and the mean spikes
per gate at most the spike budget: greedily, the raise that buys the most change per step of latency (or per
spike) first, raises that cost no latency (off the critical path) before any, then single moves of K between two
sites while they lower the sum. The uniform K that fits the budgets competes, so a choice never predicts worse than
it.
"""

from __future__ import annotations

from dataclasses import dataclass

from amos_onnx.errors import OptionError
from amos_onnx.fit import change
from amos_onnx.fit.paths import SiteGraph


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
        fewest = self.fewest()
        if self.feasible(fewest):
            return fewest
        every = sorted({k for s in self.free for k in self.ks[s]})
        raise OptionError(f"--spike-budget {self.spike_budget}: the fewest spikes per gate reachable with K in "
                          f"{every[0]}..{every[-1]} are {self.spikes_per_gate(fewest):.3f}")

    def fewest(self) -> dict[str, int]:
        """Each free site at its K with the fewest spikes (the smaller K on a tie), the pinned at theirs."""
        def least(site: str) -> int:
            return min(self.ks[site], key=lambda k: (self.spikes[site][k], k))

        return {s: self.pinned[s] if s in self.pinned else least(s) for s in self.graph.order}

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
