"""The paths of gates through a network: which sites follow which, the latency of a choice of K per site (the sum
of K along the deepest path of gates, as report.files.latency reads it off a converted model) and its critical
path. Only top-level sites count, as in the report: a gate inside an If, Loop or Scan body runs in its node's
time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from amos_onnx.find.sites import Site
from amos_onnx.rewrite.graph import node_id


@dataclass(frozen=True)
class SiteGraph:
    """The top-level converting sites in graph order, each with the sites right before it on some path (no other
    site in between)."""

    order: tuple[str, ...]
    before: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, model: onnx.ModelProto, sites: list[Site]) -> SiteGraph:
        top = [s for s in sites if s.converts and not s.graph]
        by_node = {key: s for s in top for key in (s.nodes or (s.output,))}
        last: dict[str, frozenset[str]] = {}  # per tensor: the nearest sites upstream of it
        before: dict[str, frozenset[str]] = {}
        order: list[str] = []
        for node in model.graph.node:
            site = by_node.get(node_id(node))
            if site is None:
                reach = frozenset().union(*(last.get(name, frozenset()) for name in node.input if name))
                for name in node.output:
                    last[name] = reach
                continue
            for name in node.output:  # the composite's inner tensors come after the site's own input
                last[name] = frozenset([site.name]) if name == site.output else last.get(site.input, frozenset())
            if site.output in node.output:
                before[site.name] = last.get(site.input, frozenset())
                order.append(site.name)
        return cls(tuple(order), before)

    def finish(self, ks: Mapping[str, int]) -> dict[str, int]:
        """Per site: the time step its gate is done, K summed along the deepest path of gates ending there."""
        done: dict[str, int] = {}
        for name in self.order:
            done[name] = ks[name] + max((done[b] for b in self.before[name]), default=0)
        return done

    def around(self, ks: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Per site: the steps of the deepest path of gates before it and after it. Raising its K to k makes the
        latency max(latency, before + k + after)."""
        done = self.finish(ks)
        after = dict.fromkeys(self.order, 0)
        for name in reversed(self.order):
            for b in self.before[name]:
                after[b] = max(after[b], ks[name] + after[name])
        return {name: (done[name] - ks[name], after[name]) for name in self.order}

    def latency(self, ks: Mapping[str, int]) -> int:
        """Time steps along the deepest path of gates, each costing its K."""
        return max(self.finish(ks).values(), default=0)

    def critical_path(self, ks: Mapping[str, int]) -> list[str]:
        """The sites of a deepest path, first to last (the first such path in graph order)."""
        done = self.finish(ks)
        if not done:
            return []
        place = {name: i for i, name in enumerate(self.order)}
        path = [max(self.order, key=lambda n: (done[n], -place[n]))]
        while self.before[path[-1]]:
            here = path[-1]
            path.append(min((b for b in self.before[here] if done[b] == done[here] - ks[here]), key=place.__getitem__))
        return path[::-1]

    def depth(self) -> int:
        """Gates along the deepest path: the smallest latency (K = 1 at every site)."""
        return self.latency(dict.fromkeys(self.order, 1))
