"""Empirical bias correction: the mean shift the gates leave at each linear layer's output, measured in
onnxruntime on the kept calibration samples and subtracted from that layer's bias, level by level.

One model holds every site's activation and gate side by side (fit.focus.switched_model) and every target's
bias as an input (compensate.targets). It is cut into one segment per target level (rewrite.segments) and
walked over the samples (compensate.walk) in two streams that run side by side: the original (every switch off)
and the corrected (every site spiking, the biases corrected so far); the plain outputs (every site spiking, no
correction) come from one run of the whole model at the start. At each level the corrected stream's targets are
compared with the original's: per channel, the mean of (spiking output - original output). Where it stands out
of the noise (more than SIGNIFICANCE standard errors of the mean, over samples), the bias takes it back. Later
levels so see the corrected network: their corrections take back what is left (sequential, as in SNN
Calibration and AdaQuant). A bias is uniform over positions while a gate's error is not (a detector's
background, where a later sigmoid saturates, can outweigh its objects), so each level's corrections are kept
only when, with the sites up to that level spiking and the rest as they were, they bring the model's outputs
closer to the original's (the rest of the model run from that level on), and all of them are written only when
the corrected stream ends closer to the original than the plain outputs. Every node so runs about once per
stream, and the checks from their level on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from amos_onnx.compensate.targets import Target, bias_values, constant_tensors, find_targets, site_levels
from amos_onnx.compensate.walk import Walk
from amos_onnx.data.inputs import model_layout, sliceable
from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.options import EmitForm
from amos_onnx.rewrite.biases import bias_inputs, set_constants
from amos_onnx.rewrite.segments import split

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

SIGNIFICANCE = 2.0  # a channel's mean shift is taken back when it exceeds this many standard errors
# Samples each run measures on (the first kept ones, all of them when fewer): the shift's error is taken over
# samples, so the runs need several whatever the level count; a run per level and one more.
SAMPLES = 128


@dataclass(frozen=True)
class Correction:
    """A target's bias before and after (float64, per channel) and how many channels changed."""

    target: Target
    before: np.ndarray
    after: np.ndarray

    @property
    def changed(self) -> int:
        return int(np.count_nonzero(self.after != self.before))

    @property
    def largest(self) -> float:
        return float(np.max(np.abs(self.after - self.before), initial=0.0))


@dataclass(frozen=True)
class Compensation:
    """Every target's correction, measured on `samples` calibration samples in `levels` + 1 runs each."""

    corrections: list[Correction]
    samples: int
    levels: int
    ratio: float = 1.0  # the outputs' error with the corrections over without, every site spiking (mean over outputs)
    judged: bool = True  # False: the model has no floating-point output to judge corrections by, none is measured

    @property
    def kept(self) -> bool:
        """Whether the corrections are written: they brought the outputs closer to the original's."""
        return self.ratio < 1.0

    def notes(self) -> list[str]:
        changed = [c for c in self.corrections if c.changed]
        if not self.corrections:
            return ["bias correction: no linear layer with a bias follows a converted site"]
        if not self.judged:
            return [f"bias correction: {NO_JUDGE}: every bias kept as it was"]
        found = (f"{len(self.corrections)} layers' biases measured on {self.samples} calibration samples level by "
                 f"level ({self.levels} levels); the outputs' error (KL for a classifier's, else mean square) "
                 f"x{self.ratio:.3g} of the uncorrected")
        if not self.kept:
            return [f"bias correction: {found}, not closer: every bias kept as it was"]
        text = f"bias correction: {len(changed)} of {found}"
        if changed:
            top = max(changed, key=lambda c: c.largest)
            text += f"; largest change {top.largest:.3g} at {top.target.name}"
        return [text]

    def apply(self, model: onnx.ModelProto) -> list[str]:
        """Write the changed biases into `model` (in place; rewrite.biases.set_constants): the initializers
        written."""
        changed = [c for c in self.corrections if c.changed]
        return set_constants(model, [(c.target.node, c.target.name, c.target.slot, c.target.bias,
                                      c.after.astype(helper.tensor_dtype_to_np_dtype(c.target.dtype)))
                                     for c in changed], prune=True)

    def rows(self, written: list[str]) -> list[dict[str, object]]:
        """The report's rows: each changed bias, with the initializer apply() wrote for it."""
        changed = [c for c in self.corrections if c.changed]
        return [{"node": c.target.name, "initializer": name, "channels": c.target.channels, "changed": c.changed,
                 "largest": c.largest} for c, name in zip(changed, written)]


def compensate(p: Plan, fits: dict[str, SiteFit]) -> Compensation:
    """The bias corrections for the plan's model with these fits (see the module text), measured on the first
    SAMPLES of the plan's kept calibration samples (all of them when fewer, fewer when their tensors outgrow
    walk.WALK_BYTES): the measuring model walked segment by segment (one per target level) in two streams,
    the original (every switch off) and the corrected (every site spiking), and run once whole for the plain
    outputs (every site spiking, biases as they were). At
    each level the corrected stream's targets are measured against the original's; where their shifts stand out
    they are taken back if, the sites after that level left as they were, the model's floating-point outputs get
    closer to the original's, and the segment runs again with them. At the
    end all of them are kept only if the corrected stream's outputs are closer to the original's than the plain
    ones (output_errors, their ratio averaged over the outputs)."""
    sites = [s for s in p.sites if s.converts and not s.graph and s.name in fits]
    tensor_level, _ = site_levels(p.model, sites)
    targets = find_targets(p.model, sites, tensor_level)
    levels = sorted({t.level for t in targets})
    if not targets or not p.feeds:
        return Compensation([], 0, len(levels))
    before = {t.node: bias_values(constant_tensors(p.model), t) for t in targets}
    results = [name for name, _ in p.judged]
    if not results:  # nothing to judge the corrections by: none is measured
        return Compensation([Correction(t, before[t.node], before[t.node]) for t in targets], 0, len(levels),
                            judged=False)
    kept = focus.first_samples(p.feeds, SAMPLES, sliceable(p.model, p.axes))
    mixed, switches, slots = measuring_model(p.model, sites, fits, targets, p.options.emit, p.judged)
    walk = Walk(mixed, split(mixed, tensor_level, levels, {t.output for t in targets}),
                [model_layout(feed, p.axes) for feed in kept], ["original", "corrected"], results,
                f"{p.model_path} (bias correction)", p.model_path.parent)
    biases = dict(before)

    def extra(on: bool, fed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**{switch: np.array(on) for switch in switches.values()},
                **{slots[t.node]: fed[t.node].astype(helper.tensor_dtype_to_np_dtype(t.dtype)) for t in targets}}

    original, plain = extra(False, before), extra(True, before)
    goal, unchanged = (walk.finish(0, "original", switched, results) for switched in (original, plain))
    for part in range(len(walk.segments)):
        want, got = walk.run(part, "original", original), walk.run(part, "corrected", extra(True, biases))
        chosen = [t for t in targets if part and t.level == levels[part - 1]]
        shifts = {t.node: mean_shift([g[t.output] for g in got], [w[t.output] for w in want], t.axis)
                  for t in chosen}
        if any(shift.any() for shift in shifts.values()):
            trial = {**biases, **{t.node: biases[t.node] - shifts[t.node] / t.scale for t in chosen}}
            # the sites after this level as they were: every later switch off
            was, now = (output_errors(walk.finish(part, "corrected", extra(False, fed), results), goal[:len(got)])
                        for fed in (biases, trial))
            if error_ratio(was, now) < 1.0:
                biases, got = trial, walk.run(part, "corrected", extra(True, trial))
        walk.store(part, "original", want)
        walk.store(part, "corrected", got)
        walk.trim()
    ratio = end_ratio(walk, "corrected", results, unchanged)
    chosen_biases = biases if ratio < 1.0 else before
    corrections = [Correction(t, before[t.node], chosen_biases[t.node]) for t in targets]
    return Compensation(corrections, walk.samples, len(levels), ratio)


NO_JUDGE = "no floating-point output to judge it by, nor one its outputs are computed from"


def end_ratio(walk: Walk, fixed: str, results: list[str], plain: list[list[np.ndarray]]) -> float:
    """At the end of a walk: the outputs' error of stream `fixed` over that of the `plain` outputs (per feed, as
    the walk started: those of the feeds it still holds), against stream "original" (error_ratio of
    output_errors)."""
    goal = walk.outputs("original", results)
    return error_ratio(output_errors(plain[:len(goal)], goal),
                       output_errors(walk.outputs(fixed, results), goal))


def error_ratio(plain: list[float], fixed: list[float]) -> float:
    """The outputs' errors with the corrections over without, averaged over the outputs (1 when none has any)."""
    ratios = [b / a for a, b in zip(plain, fixed) if a > 0]
    return float(np.mean(ratios)) if ratios else 1.0


def output_errors(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> list[float]:
    """Per model output, its distance from the original's over every run (runs may differ in shape): for a
    classifier's output (2-D, at least two columns, as validate tells them) the mean KL divergence of the spiking
    softmax from the original's per row, which a common shift of the logits does not change; else the mean
    square difference."""
    errors = []
    for i in range(len(want[0])):
        total, count = 0.0, 0
        for got_run, want_run in zip(got, want):
            a, b = np.asarray(got_run[i], np.float64), np.asarray(want_run[i], np.float64)
            if b.ndim == 2 and b.shape[1] >= 2:
                p, q = (np.exp(v - v.max(axis=1, keepdims=True)) for v in (b, a))
                p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
                total += float(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300))))
                count += b.shape[0]
            else:
                total += float(np.sum(np.square(a - b)))
                count += b.size
        errors.append(total / max(count, 1))
    return errors


def mean_shift(spiking: list[np.ndarray], original: list[np.ndarray], axis: int) -> np.ndarray:
    """Per channel (along `axis`), the mean of spiking - original over every other axis and every run, where it
    exceeds SIGNIFICANCE standard errors of that mean; 0 elsewhere. The error is taken over samples (the first
    axis; each sample's mean over its other positions is one value), whose values are independent, not over the
    positions of one image, which are not: a channel seen in one sample is never corrected."""
    units = []
    for s, o in zip(spiking, original):
        diff = np.moveaxis(np.asarray(s, np.float64) - np.asarray(o, np.float64), axis, -1)
        if diff.ndim == 1:
            diff = diff[None]
        units.append(diff.reshape(diff.shape[0], -1, diff.shape[-1]).mean(axis=1))
    per_sample = np.concatenate(units)
    if per_sample.shape[0] < 2:
        return np.zeros(per_sample.shape[-1])
    mean = per_sample.mean(axis=0)
    error = per_sample.std(axis=0, ddof=1) / np.sqrt(per_sample.shape[0])
    return np.where(np.abs(mean) > SIGNIFICANCE * error, mean, 0.0)


def measuring_model(model: onnx.ModelProto, sites: list[Site], fits: dict[str, SiteFit], targets: list[Target],
                    form: EmitForm, judged: Sequence[tuple[str, int]] = ()) -> tuple[onnx.ModelProto, dict[str, str],
                                                                                      dict[str, str]]:
    """focus.switched_model (with `judged` as outputs) with each target's bias as an input of its own and each
    target's output as an output (rewrite.biases.bias_inputs): the model, the switches by site name and the bias
    inputs by target node."""
    mixed, switches = focus.switched_model(model, sites, fits, form, judged)
    return mixed, switches, bias_inputs(mixed, [(t.node, t.slot, t.output, t.dtype, t.channels) for t in targets])
