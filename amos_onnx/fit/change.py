"""How far gates moved a model's outputs, measured on calibration samples (the time budget's measure), and whether
one set of gates moved them significantly less than another.

The change is summed over the outputs: for scores of a classifier (rank 2, at least 2 classes) the mean
Kullback-Leibler divergence of their softmax (of the rows themselves when they are probabilities already) from
the original's, in nats per sample; otherwise the relative square error. unit_changes splits it into the shares
of the samples (the rows of the outputs' first axis, or the feeds where outputs disagree on their rows), so that
two sets of gates measured on the same samples can be compared sample by sample.

The outputs measured are the model's floating-point ones; a model without any (an exported ArgMax's labels, say)
is measured at the floating-point tensors its outputs are computed from (judged_tensors).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from amos_onnx.load import with_shapes

Runs = list[list[np.ndarray]]  # a model's floating-point outputs, per feed, in the session's output order
MEASURED_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)  # the element types measured

# A per-site choice of K replaces the uniform K only when its measured change is lower by more than this many
# standard errors of the paired per-sample difference: a gap within the samples' noise does not carry to others.
SIGNIFICANCE = 2.0


def unit_changes(base: Runs, runs: Runs) -> np.ndarray:
    """output_change's shares, one per sample (a row of every output's first axis per feed; one per feed when the
    outputs disagree on their rows or have none): they sum to output_change."""
    per_output = [_rows(base, runs, o) for o in range(len(base[0]) if base else 0)]
    if not per_output:
        return np.zeros(len(base))
    if all(len(rows) == len(per_output[0][0]) for rows, _ in per_output):
        return np.sum([rows for rows, _ in per_output], axis=0)  # type: ignore[no-any-return]
    feeds = [np.bincount(feed, weights=rows, minlength=len(base)) for rows, feed in per_output]
    return np.sum(feeds, axis=0)  # type: ignore[no-any-return]


def output_change(base: Runs, runs: Runs) -> float:
    """How far `runs` moved the outputs of `base` (see the module text)."""
    return float(np.sum(unit_changes(base, runs)))


def _rows(base: Runs, runs: Runs, o: int) -> tuple[np.ndarray, np.ndarray]:
    """Output o's change per row of its first axis (a whole feed's output for a scalar), summing to its change,
    and each row's feed."""
    a = [np.asarray(r[o], np.float64) for r in base]
    b = [np.asarray(r[o], np.float64) for r in runs]
    a = [x if x.ndim else x.reshape(1) for x in a]
    b = [x if x.ndim else x.reshape(1) for x in b]
    feed = np.concatenate([np.full(len(x), i) for i, x in enumerate(a)]).astype(np.int64)
    if a[0].ndim == 2 and a[0].shape[1] >= 2:
        p, q = _probabilities(np.concatenate(a)), _probabilities(np.concatenate(b))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - np.log(np.maximum(q, 1e-300))), 0.0)
        return np.sum(terms, axis=1) / len(p), feed
    x, y = np.concatenate(a), np.concatenate(b)
    square = np.square(y - x).reshape(len(x), -1).sum(axis=1)
    return square / max(float(np.sum(np.square(x))), 1e-300), feed


def _probabilities(scores: np.ndarray) -> np.ndarray:
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def standard_error(mine: np.ndarray, other: np.ndarray) -> float:
    """The standard error of sum(mine) - sum(other) from their paired per-sample shares (unit_changes on the same
    samples); inf with fewer than two samples."""
    d = mine - other
    return float(np.std(d, ddof=1) * np.sqrt(d.size)) if d.size > 1 else float("inf")


def significantly_lower(mine: np.ndarray, other: np.ndarray) -> bool:
    """Whether `mine` moved the outputs less than `other` by more than SIGNIFICANCE standard errors (with fewer
    than two samples, by anything)."""
    gap = float(np.sum(other) - np.sum(mine))
    if mine.size < 2:
        return gap > 0
    return gap > SIGNIFICANCE * standard_error(mine, other)


def judged_tensors(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """The tensors (name, element type) a conversion's effect on the outputs is measured at: the model's
    floating-point outputs; without any, the first floating-point tensors found walking back from each output
    through the nodes that make it (ArgMax's scores, through a Cast, say); none when no output comes from one."""
    floats = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output
              if o.type.tensor_type.elem_type in MEASURED_TYPES]
    if floats or not model.graph.output:
        return floats
    typed = with_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.input, *typed.value_info, *typed.output]}
    constant = {t.name for t in model.graph.initializer} | {
        out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    made = {out: n for n in model.graph.node for out in n.output if out}
    found: list[tuple[str, int]] = []
    seen: set[str] = set()
    pending = [o.name for o in model.graph.output]
    while pending:
        name = pending.pop(0)
        if name in seen or name in constant:
            continue
        seen.add(name)
        if types.get(name) in MEASURED_TYPES and name in made:
            found.append((name, types[name]))
        elif name in made:
            pending += [i for i in made[name].input if i]
    return found
