"""Weight reconstruction: each linear layer after the gates refitted, in closed form, to give from the inputs it
really gets what the original layer gave from the original inputs (SNN Calibration's advanced mode, Li et al.
2021; AdaQuant's layer-wise reconstruction without the rounding).

The model is walked level by level (compensate.walk over the focus's switched model, one segment per layer
level) in two streams: the original (every switch off) and the refitted (every site spiking, the layers refitted
so far in place); the plain outputs (every site spiking, no change) come from one run of the whole model at the
start. At each level, a layer's input in the refitted stream (x~) and in the original (x) give, at seeded output
positions (ELEMENTS bounds rows x inputs), the rows it multiplies (compensate.layers); its weights and bias are
refitted by ridge regression of the original output W x + b on x~, pulled towards W (ALPHA: the ridge's weight
against the rows' mean square), from the rows' Gram matrices (rows float32, solve float64; written by
rewrite.biases.set_constants, which stores values below the type's normal range as 0). The refit is kept when it
lowers the layer's error on held-out samples (every HELD_OUT-th sample, never fitted on); with too few rows for
its inputs (under ROW_FACTOR per unknown) the layer keeps its weights, and with fewer than MIN_SAMPLES samples no
layer is refitted (one sample's rows are alike: many rows of a few samples fit those samples, not the data).
Later levels then see the refitted layers. All the refits are written only when the refitted stream's outputs end
closer to the original's than the plain ones (as for bias correction). Weights and biases change; the gates and
the graph do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from amos_onnx.compensate import walk as walks
from amos_onnx.compensate.bias import NO_JUDGE, end_ratio
from amos_onnx.compensate.layers import Layer, layers, patches, positions
from amos_onnx.compensate.targets import constant_tensors, find_targets, site_levels
from amos_onnx.compensate.walk import Walk
from amos_onnx.data.dataset import sample_count
from amos_onnx.data.inputs import model_layout, sliceable
from amos_onnx.fit import focus
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.rewrite.biases import set_constants
from amos_onnx.rewrite.segments import split

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

ALPHA = 0.1  # ridge weight towards the trained weights, relative to the mean diagonal of the rows' Gram matrix
ROW_FACTOR = 2  # fitted rows per unknown (inputs per group + the bias) at least, else the layer is kept
ELEMENTS = 1 << 23  # rows x inputs x groups drawn per layer at most (64 MiB of float64 per stream)
HELD_OUT = 4  # every HELD_OUT-th sample judges the refit and is never fitted on
# Samples the walk needs at least (the rows of one sample are alike: many rows of a few samples fit those samples);
# with fewer, no layer is refitted and the note says so.
MIN_SAMPLES = 32
SAMPLES = focus.KEEP_SAMPLES  # every kept calibration sample (the refits need rows: more than bias correction)


@dataclass(frozen=True)
class Refit:
    """A layer's weights and bias (float64, as stored; the bias per channel, before a Gemm's beta) after its refit,
    and its held-out error after over before."""

    layer: Layer
    weight: np.ndarray
    bias: np.ndarray
    ratio: float


@dataclass(frozen=True)
class Reconstruction:
    """The refits, on `samples` calibration samples; `layers`: the layers found; `ratio`: the outputs' error with
    the refits over without (every site spiking)."""

    refits: list[Refit]
    layers: int
    samples: int
    ratio: float = 1.0
    judged: bool = True  # False: the model has no floating-point output to judge refits by, none is made
    offered: int = 0  # the calibration's samples, when memory held fewer of them (`samples`); else 0
    bound: str = ""  # the memory bound that held them: "kept" (focus.KEEP_BYTES) or "walk" (walk.WALK_BYTES)

    @property
    def kept(self) -> bool:
        return bool(self.refits) and self.ratio < 1.0

    def notes(self) -> list[str]:
        if not self.layers:
            return ["weight reconstruction: no Conv, Gemm or MatMul + Add with constant weights follows a converted "
                    "site"]
        if not self.judged:
            return [f"weight reconstruction: {NO_JUDGE}: every weight kept"]
        if self.samples < MIN_SAMPLES:
            held = f"{self.samples} calibration samples"
            if self.offered > self.samples:  # memory, not the calibration data, held them: more data would not help
                room = (f"the {focus.KEEP_BYTES / 2**20:.0f} MiB of samples kept for measuring" if self.bound == "kept"
                        else f"the {walks.WALK_BYTES / 2**20:.0f} MiB of this model's tensors its walk holds")
                held = f"{self.samples} of the {self.offered} calibration samples (as many as fit in {room})"
            return [f"weight reconstruction: {held}, fewer than the {MIN_SAMPLES} a refit needs to fit and judge it "
                    "(the rows of one sample are alike): every weight kept"]
        found = (f"{len(self.refits)} of {self.layers} layers refitted on {self.samples} calibration samples level by "
                 f"level; the outputs' error (KL for a classifier's, else mean square) x{self.ratio:.3g} of the "
                 "unrefitted")
        return [f"weight reconstruction: {found}" + ("" if self.kept else ", not closer: every weight kept")]

    def apply(self, model: onnx.ModelProto) -> list[str]:
        """Write the refitted weights and biases into `model` (in place): the initializers written (every weight,
        then every bias)."""
        return write(model, self.refits, prune=True) if self.kept else []

    def rows(self, written: list[str]) -> list[dict[str, object]]:
        """The report's rows: each refitted layer, the initializers apply() wrote for it, its bias's largest change,
        its weights' relative change and its held-out error after over before."""
        if not written:
            return []
        count = len(self.refits)
        return [{"node": r.layer.target.name, "initializer": written[count + i], "weight_initializer": written[i],
                 "channels": r.layer.target.channels, "changed": int(np.count_nonzero(r.bias != r.layer.bias)),
                 "largest": float(np.max(np.abs(r.bias - r.layer.bias), initial=0.0)),
                 "weight_change": float(np.linalg.norm(r.weight - r.layer.weight)
                                        / max(float(np.linalg.norm(r.layer.weight)), 1e-300)),
                 "held_out_ratio": r.ratio} for i, r in enumerate(self.refits)]


def write(model: onnx.ModelProto, refits: list[Refit], prune: bool = False) -> list[str]:
    """Each refit's weight and bias into `model` (rewrite.biases.set_constants, with `prune` for a model to save):
    the initializers written."""
    constants = constant_tensors(model)
    weights, biases = [], []
    for r in refits:
        t = r.layer.target
        dtype = helper.tensor_dtype_to_np_dtype(constants[r.layer.weight_name].data_type)
        weights.append((r.layer.weight_node, t.name, 1, r.layer.weight_name, r.weight.astype(dtype)))
        bias = (r.bias / t.scale).astype(helper.tensor_dtype_to_np_dtype(t.dtype))  # a Gemm's beta scales it
        biases.append((t.node, t.name, t.slot, t.bias, bias))
    return set_constants(model, weights, "weight", prune) + set_constants(model, biases, prune=prune)


def reconstruct(p: Plan, fits: dict[str, SiteFit]) -> Reconstruction:
    """The refits for the plan's model with these fits (see the module text), on the first SAMPLES of the plan's
    kept calibration samples (fewer when their tensors outgrow walk.WALK_BYTES)."""
    sites = [s for s in p.sites if s.converts and not s.graph and s.name in fits]
    tensor_level, _ = site_levels(p.model, sites)
    found = layers(p.model, find_targets(p.model, sites, tensor_level))
    if not found or not p.feeds:
        return Reconstruction([], len(found), 0)
    kept = focus.first_samples(p.feeds, SAMPLES, sliceable(p.model, p.axes))
    count = sum(sample_count(feed) for feed in kept)
    results = [name for name, _ in p.judged]
    if not results or count < MIN_SAMPLES:  # before any model is built: on by default, it then costs nothing
        return Reconstruction([], len(found), count, judged=bool(results), offered=p.samples, bound="kept")
    levels = sorted({ly.target.level for ly in found})
    mixed, switches = focus.switched_model(p.model, sites, fits, p.options.emit, p.judged)
    walk = Walk(mixed, split(mixed, tensor_level, levels, {ly.input for ly in found}),
                [model_layout(feed, p.axes) for feed in kept], ["original", "refitted"], results,
                f"{p.model_path} (weight reconstruction)", p.model_path.parent)
    off = {switch: np.array(False) for switch in switches.values()}
    on = {switch: np.array(True) for switch in switches.values()}
    rng = np.random.default_rng(p.options.fit.seed)
    refits: list[Refit] = []
    plain = walk.finish(0, "original", on, results)  # before any layer changes
    for part in range(len(walk.segments)):
        if walk.samples < MIN_SAMPLES:  # trimmed to too few
            return Reconstruction([], len(found), walk.samples, offered=p.samples, bound="walk")
        # the original stream runs this segment before its layers change, and its outputs are stored once
        # the refits have read them: one stream's segment outputs are held at a time, not two
        want = walk.run(part, "original", off)
        here = [ly for ly in found if part and ly.target.level == levels[part - 1]]
        done, got = level_refits(walk, part, here, want, on, rng)
        refits += done
        walk.store(part, "original", want)
        walk.store(part, "refitted", got if got is not None else walk.run(part, "refitted", on))
        walk.trim()
    return Reconstruction(refits, len(found), walk.samples, end_ratio(walk, "refitted", results, plain))


def level_refits(walk: Walk, part: int, here: list[Layer], want: list[dict[str, np.ndarray]],
                 on: dict[str, np.ndarray], rng: np.random.Generator,
                 stream: str = "refitted") -> tuple[list[Refit], list[dict[str, np.ndarray]] | None]:
    """The layers `here` of segment `part` refitted on their inputs in `stream` (every site spiking: switches
    `on`) against those in `want` (the original stream's outputs of this segment), written into the walk's model
    (its segments built again); with the stream's outputs of this segment when they still hold (no layer changed
    and they were needed), else None: the caller runs the segment once more."""
    early = all(ly.input in walk.streams[stream][0] for ly in here)
    got = [{} for _ in walk.streams[stream]] if early else walk.run(part, stream, on)
    done = [r for ly in here if (r := refit(ly, _inputs(walk, stream, got, ly.input),
                                             _inputs(walk, "original", want, ly.input), rng)) is not None]
    if done:
        write(walk.model, done)
        walk.use(walk.model)  # the refitted layers' segment is built again with their new weights
    return done, None if done or early else got


def _inputs(walk: Walk, stream: str, made: list[dict[str, np.ndarray]], name: str) -> list[np.ndarray]:
    """A tensor per feed of `stream`: made by this segment, or held from an earlier one."""
    return [m[name] if name in m else held[name] for m, held in zip(made, walk.streams[stream])]


def refit(ly: Layer, spiking: list[np.ndarray], original: list[np.ndarray], rng: np.random.Generator) -> Refit | None:
    """The layer refitted by ridge regression of its original output on the rows of its spiking input (see the
    module text), or None when too few rows fit it or the refit does not lower its held-out error. The rows are
    float32; the regression needs only their Gram matrices (with a column of ones for the bias), solved in
    float64."""
    matrices = ly.matrices()
    groups, outs, ins = matrices.shape
    per_sample = np.array([positions(ly, x.shape) for x in original], np.int64)
    counts = per_sample * [x.shape[0] for x in original]
    total = int(counts.sum())
    draw = min(total, max(ELEMENTS // (groups * (ins + 1)), 1))
    if not total:
        return None
    chosen = np.sort(rng.choice(total, size=draw, replace=False)) if draw < total else np.arange(total)
    starts = np.cumsum([0, *counts])
    feed = np.searchsorted(starts, chosen, side="right") - 1
    local = chosen - starts[feed]
    first_sample = np.cumsum([0, *(x.shape[0] for x in original)])
    held = (first_sample[feed] + local // np.maximum(per_sample[feed], 1)) % HELD_OUT == HELD_OUT - 1
    if np.count_nonzero(~held) < ROW_FACTOR * (ins + 1) or not held.any():
        return None
    (fit_s, fit_o), (held_s, held_o) = ([_rows(ly, xs, feed[mask], local[mask], (groups, ins))
                                         for xs in (spiking, original)] for mask in (~held, held))
    bias = ly.bias.reshape(groups, outs)
    before = np.concatenate([matrices, bias[:, :, None]], axis=2).transpose(0, 2, 1)  # groups, ins + 1, outs
    gram = _augmented(fit_s, fit_s)
    ridge = ALPHA * np.trace(gram, axis1=1, axis2=2) / (ins + 1)
    system = gram + ridge[:, None, None] * np.eye(ins + 1)
    after = np.linalg.solve(system, _right_side(fit_s, fit_o, before) + ridge[:, None, None] * before)
    if not np.all(np.isfinite(after)):
        return None
    target = _apply(held_o, before)
    errors = [_distance(_apply(held_s, m), target) for m in (before, after)]
    if not errors[1] < errors[0]:
        return None
    weight = ly.with_matrices(after[:, :-1, :].transpose(0, 2, 1))
    return Refit(ly, weight, after[:, -1, :].reshape(-1), errors[1] / errors[0])


def _rows(ly: Layer, inputs: list[np.ndarray], feed: np.ndarray, local: np.ndarray,
          shape: tuple[int, int]) -> np.ndarray:
    """The rows (patches) at positions `local` of inputs[feed], feed sorted: (groups, rows, inputs per group),
    `shape` giving the groups and inputs per group."""
    bounds = np.flatnonzero(np.diff(feed, prepend=-1, append=-1))
    out = np.empty((shape[0], len(local), shape[1]), np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        out[:, a:b] = patches(ly, inputs[feed[a]], local[a:b])
    return out


def _augmented(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[a 1]^T [b 1] per group, float64 (the products in float32): (groups, ins + 1, ins + 1)."""
    groups, rows, ins = a.shape
    out = np.empty((groups, ins + 1, ins + 1))
    out[:, :ins, :ins] = a.transpose(0, 2, 1) @ b
    ones = np.ones(rows, np.float32)
    out[:, :ins, ins] = ones @ a
    out[:, ins, :ins] = ones @ b
    out[:, ins, ins] = rows
    return out


def _right_side(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[a 1]^T [b 1] m per group, float64 (the products in float32): through [b 1] m, the original outputs, when
    the layer has fewer than half as many outputs as inputs (a k x k Conv's: 4.5x fewer products at 3 x 3), else
    through the Gram matrix of a and b."""
    groups, rows, ins = a.shape
    if 2 * m.shape[2] >= ins:
        return _augmented(a, b) @ m
    target = _apply(b, m)
    out = np.empty((groups, ins + 1, m.shape[2]))
    out[:, :ins] = a.transpose(0, 2, 1) @ target
    out[:, ins] = np.ones(rows, np.float32) @ target
    return out


def _apply(rows: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[rows 1] @ m per group (m: groups, ins + 1, outs), float32."""
    out = rows @ m[:, :-1].astype(np.float32)
    out += m[:, -1][:, None, :].astype(np.float32)
    return out


def _distance(got: np.ndarray, want: np.ndarray) -> float:
    """Sum of squares of got - want (float32, `got` overwritten), summed in float64."""
    got -= want
    return float(np.sum(np.square(got, out=got), dtype=np.float64))
