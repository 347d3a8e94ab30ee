"""A network-aware search budget: how much each site's gate moves the model's outputs, and which fits get
more local-search moves for it.

A gate's error matters as much as the network lets it through: the same squared error at the stem of a
CNN and at a squeeze-excitation gate moves the logits very differently. effects() measures it directly:
one model holds every measured site's activation and its gate side by side, a switch per site picks the
gate, and the calibration samples kept by calibrate run once per site with only that site switched. The
fits whose sites make up most of the measured change are then refitted with more moves (fit.sites.fit_sites'
refocus, as pipeline.fit_plan does), starting from their first fit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper

from amos_onnx.data.dataset import sample_count
from amos_onnx.data.inputs import model_layout, rows, sliceable
from amos_onnx.find.sites import Site
from amos_onnx.fit.change import MEASURED_TYPES, Runs
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.options import EmitForm
from amos_onnx.parallel import RUN_THREADS, cpus, threads_map
from amos_onnx.rewrite.fanned import fanned_model, group_size
from amos_onnx.rewrite.graph import Emitter, node_id
from amos_onnx.runtime import run_checked, user_session

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

FOCUS_SHARE = 0.5  # the largest fits are focused until they make up this share of the measured change ...
FOCUS_FITS = 2  # ... at most this many
KEEP_SAMPLES = 256  # calibration samples kept for measuring (calibrate's keep) ...
KEEP_BYTES = 64 << 20  # ... and at most this much of them (at least one batch)
# Measuring runs the model once per measured site and once more: over all its runs it sees at most this many
# times the calibration's samples (at least one kept batch per run), so it costs about as many calibration passes
# whatever the site count ...
FOCUS_PASSES = 4
FOCUS_BYTES = 64 << 20  # ... and at most this many bytes of inputs (at least one sample per run)


def searched(site: Site, fit_: SiteFit | None) -> bool:
    """Whether more moves can change this site's gate: a calibrated fit of a gate the fitter searches (a
    ReLU-like gate is a rounding ladder, fitted without local search), in the top-level graph."""
    act = site.activation
    return (site.converts and not site.graph and act is not None and not act.relu_like and fit_ is not None
            and fit_.calibrated and site.dtype in MEASURED_TYPES)


def switched_model(model: onnx.ModelProto, sites: list[Site], fits: dict[str, SiteFit], form: EmitForm,
                   judged: Sequence[tuple[str, int]] = ()) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` in which each site's output is If(switch, its gate, its activation), with one boolean
    scalar switch input per site (its name by site name): a run computes only the gates switched on. The tensors
    the outputs are measured at (`judged`: a plan's, change.judged_tensors) are outputs of it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph, emitter = copy.graph, Emitter(copy, form)
    names = emitter.names
    by_output = {s.output: s for s in sites}
    nodes: list[onnx.NodeProto] = []
    switches: dict[str, str] = {}
    for node in graph.node:
        nodes.append(node)
        site = by_output.get(node_id(node))
        if site is None:
            continue
        clean, gate, kept, switch = (names.make(f"{site.name}/amos/{part}")
                                     for part in ("original", "gate", "kept", "switch"))
        node.output[list(node.output).index(site.output)] = clean
        made, inits = emitter.gate_nodes(site, gate, fits[site.name].params)
        graph.initializer.extend(inits)
        branches = {"then_branch": (made, gate), "else_branch": (
            [helper.make_node("Identity", [clean], [kept], name=names.make(f"{site.name}/amos/keep"))], kept)}
        graphs = {key: helper.make_graph(body, names.make(f"{site.name}/amos/{key}"), [],
                                         [helper.make_tensor_value_info(out, site.dtype, None)])
                  for key, (body, out) in branches.items()}
        nodes.append(helper.make_node("If", [switch], [site.output], name=names.make(f"{site.name}/amos/if"),
                                      **graphs))
        graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, []))
        switches[site.name] = switch
    del graph.node[:]
    graph.node.extend(nodes)
    outputs = {o.name for o in graph.output}  # a model without floating-point outputs: what they come from too
    graph.output.extend(helper.make_tensor_value_info(name, dtype, None) for name, dtype in judged
                        if name not in outputs)
    emitter.add_functions(copy)
    return copy, switches


@dataclass(frozen=True)
class Effects:
    """Mean square change of the model's floating-point outputs, per site, with that site's gate alone in
    place of its activation, on `samples` calibration samples. `focused`: the sites chosen for more moves
    (chosen)."""

    by_site: dict[str, float]
    samples: int
    focused: frozenset[str] = frozenset()


def measuring_feeds(feeds: list[dict[str, np.ndarray]], sites: int, calibration_samples: int | None,
                    sliceable: bool = False, passes: int = FOCUS_PASSES) -> list[dict[str, np.ndarray]]:
    """The first kept samples that `sites` + 1 runs may see within `passes` times the calibration's samples
    and FOCUS_BYTES of inputs (all of them without a count): whole kept batches (at least one), or with
    `sliceable` inputs (a free batch dimension) exactly that many rows (at least one)."""
    if calibration_samples is None or not feeds:
        return feeds
    row_bytes = sum(a.nbytes for a in feeds[0].values()) / max(sample_count(feeds[0]), 1)
    allowed = min(passes * calibration_samples, int(FOCUS_BYTES // max(row_bytes, 1.0))) // (sites + 1)
    return first_samples(feeds, allowed, sliceable)


def first_samples(feeds: list[dict[str, np.ndarray]], allowed: int,
                  sliceable: bool = False) -> list[dict[str, np.ndarray]]:
    """The first `allowed` samples of the kept feeds: whole batches (at least one), or with `sliceable` inputs
    exactly that many rows (at least one)."""
    chosen: list[dict[str, np.ndarray]] = []
    seen = 0
    for feed in feeds:
        n = sample_count(feed)
        if seen + n > allowed and (chosen or sliceable):
            if sliceable and max(allowed, 1) > seen:
                chosen.append(rows(feed, 0, max(allowed, 1) - seen))
            break
        chosen.append(feed)
        seen += n
    return chosen


def effects(p: Plan, fits: dict[str, SiteFit], calibration_samples: int | None = None) -> Effects:
    """Each searched site's effect on the plan's model's outputs (see Effects), measured in onnxruntime on the
    plan's kept feeds, as many as measuring_feeds allows for `calibration_samples` (default: the plan's)."""
    measured = [s for s in p.sites if searched(s, fits.get(s.name))]
    by_site, samples = site_effects(p, measured, [fits], mean_square, calibration_samples)
    return Effects(by_site[0] if by_site else {}, samples)


def mean_square(base: Runs, runs: Runs) -> float:
    """Mean square change of every floating-point output element."""
    def flat(r: Runs) -> np.ndarray:
        return np.concatenate([np.asarray(a, np.float64).ravel() for parts in r for a in parts])

    return float(np.mean(np.square(flat(runs) - flat(base))))


Change = TypeVar("Change")  # what a change function gives: a float, or per-sample shares (change.unit_changes)


def site_effects(p: Plan, measured: list[Site], fit_sets: list[dict[str, SiteFit]],
                 change: Callable[[Runs, Runs], Change], calibration_samples: int | None = None,
                 passes: int = FOCUS_PASSES, groups: dict[str, frozenset[str]] | None = None,
                 wanted: Sequence[Collection[str]] | None = None,
                 runs: int | None = None) -> tuple[list[dict[str, Change]], int]:
    """For each set of fits, change(outputs without gates, outputs with one site's gate) for each `measured` site
    (floating-point, top-level sites; every set has a fit for each), or with `groups` (label: sites) for each
    group's gates together, on the plan's kept feeds, as many as measuring_feeds allows for
    `calibration_samples` (default: the plan's), `passes` and `runs` runs (default: one per group and set); and
    the number of samples measured on (no sets when nothing can be measured). `wanted`: per set, the groups
    measured (labels; default all). Calls with the same `runs` measure on the same samples."""
    groups = groups if groups is not None else {s.name: frozenset([s.name]) for s in measured}
    if not measured or not p.feeds or not fit_sets or not groups:
        return [], 0
    samples = p.samples if calibration_samples is None else calibration_samples
    wanted = wanted if wanted is not None else [list(groups)] * len(fit_sets)
    runs = runs if runs is not None else sum(map(len, wanted))
    kept = measuring_feeds(p.feeds, runs, samples, sliceable(p.model, p.axes), passes)
    feeds = [model_layout(feed, p.axes) for feed in kept]  # kept feeds are batch-first
    label = f"{p.model_path} (focus)"
    base: Runs | None = None
    every: list[dict[str, Change]] = []
    singles = all(len(members) == 1 for members in groups.values())
    size = group_size(p.model, p.judged, sum(map(sample_count, kept))) if singles else 0
    for fits, labels in zip(fit_sets, wanted):
        if not labels:
            every.append({})
            continue
        fanned = _fanned(p, measured, fits, [groups[g] for g in labels], feeds, change, size, label) if size else None
        if fanned is not None:
            every.append(dict(zip(labels, fanned)))
            continue
        mixed, switches = switched_model(p.model, measured, fits, p.options.emit, p.judged)
        sess = user_session(mixed, label, folder=p.model_path.parent, threads=RUN_THREADS)
        outputs = [o.name for o in sess.get_outputs()
                   if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)")]
        if not outputs:
            return [], 0

        def run(on: frozenset[str], side_by_side: bool = False) -> Runs:
            flags = {name: np.array(site in on) for site, name in switches.items()}  # noqa: B023 (run here)
            one = lambda feed: run_checked(sess, outputs, {**feed, **flags}, label)  # noqa: B023, E731
            return threads_map(one, feeds) if side_by_side else [one(feed) for feed in feeds]

        # Every set's model computes the original with its gates off. Runs go side by side: a set's groups when
        # there are more than one, else the feeds of its one group's run (the budget's final comparison).
        base = run(frozenset(), True) if base is None else base
        if len(labels) > 1:
            changes = threads_map(lambda on: change(base, run(on)), [groups[g] for g in labels])  # noqa: B023
        else:
            changes = [change(base, run(groups[next(iter(labels))], True))]
        every.append(dict(zip(labels, changes)))
    return every, sum(map(sample_count, kept))


def _fanned(p: Plan, measured: list[Site], fits: dict[str, SiteFit], alone: list[frozenset[str]],
            feeds: list[dict[str, np.ndarray]], change: Callable[[Runs, Runs], Change],
            size: int, label: str) -> list[Change] | None:
    """change(outputs without gates, outputs with one site's gate) for each site in `alone` (one each), from fanned
    models (rewrite.fanned) of at most `size` sites, at least one per CPU side by side; None where a fanned model cannot
    be made (the switched model measures those)."""
    by_name = {s.name: s for s in measured}
    sites = [by_name[next(iter(members))] for members in alone]
    parts = max(-(-len(sites) // size), min(cpus(), len(sites)))

    def measure(part: list[Site]) -> dict[str, Change] | None:
        made = fanned_model(p.model, part, {s.name: fits[s.name].params for s in part}, p.options.emit, p.judged)
        if made is None:
            return None
        model, outputs = made
        sess = user_session(model, label, folder=p.model_path.parent, threads=RUN_THREADS)
        names = [o.name for o in sess.get_outputs()]
        runs = [dict(zip(names, run_checked(sess, names, feed, label))) for feed in feeds]
        base = [[run[name] for name, _ in p.judged] for run in runs]
        return {site.name: change(base, [[run[name] for name in outputs[site.name]] for run in runs])
                for site in part}

    found = threads_map(measure, [sites[i::parts] for i in range(parts)])
    if any(part is None for part in found):
        return None
    merged = {name: value for part in found for name, value in (part or {}).items()}
    return [merged[site.name] for site in sites]


def chosen(effect: Effects, fits: dict[str, SiteFit]) -> set[str]:
    """The sites whose fits get the focus: fits (sites sharing one fit count together; fit_sites gives them
    one SiteFit object) by falling summed effect, until they make up FOCUS_SHARE of the total, FOCUS_FITS at
    most."""
    totals: dict[int, float] = {}
    for name, value in effect.by_site.items():
        totals[id(fits[name])] = totals.get(id(fits[name]), 0.0) + value
    total = sum(totals.values())
    keys: list[int] = []
    covered = 0.0
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        if covered >= FOCUS_SHARE * total or len(keys) == FOCUS_FITS or value <= 0:
            break
        keys.append(key)
        covered += value
    return {name for name in effect.by_site if id(fits[name]) in keys}
