"""Run the original model on calibration data and keep a bounded sample of what each site sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .dataset import Dataset, sample_count
from .find import Site
from .progress import Progress
from .runtime import run_checked, user_session

DEFAULT_CAP = 100_000  # values kept per site tensor, a uniform random sample of all it saw


@dataclass
class Reservoir:
    """A uniform random sample of at most `cap` values of a stream, plus exact min, max and count."""

    cap: int
    rng: np.random.Generator
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    seen: int = 0
    lo: float = np.inf
    hi: float = -np.inf

    def add(self, batch: np.ndarray) -> None:
        flat = np.asarray(batch, np.float32).ravel()
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return
        self.seen += flat.size
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        keys = self.rng.random(flat.size)
        values = np.concatenate([self.values, flat])
        keys = np.concatenate([self.keys, keys])
        if values.size > self.cap:
            keep = np.argpartition(keys, self.cap - 1)[: self.cap]
            keep.sort()
            values, keys = values[keep], keys[keep]
        self.values, self.keys = values, keys


def exposed(model: onnx.ModelProto, tensors: dict[str, int]) -> onnx.ModelProto:
    """A copy of the model that also outputs each named intermediate tensor (name: ONNX element type)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output} | {i.name for i in copy.graph.input}
    for name, dtype in tensors.items():
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, dtype, None))
    return copy


def calibrate(
    model: onnx.ModelProto, sites: list[Site], data: Dataset, *, cap: int = DEFAULT_CAP, seed: int = 0,
    label: str = "model", progress: bool | None = None, folder: str | Path | None = None,
) -> tuple[dict[str, Reservoir], int]:
    """Sample the input tensor of every converting site over all of `data`, batch by batch: the reservoirs
    and the number of samples seen. Memory stays at one batch plus `cap` values per site."""
    types = {s.input: s.dtype for s in sites if s.converts and not s.graph}  # subgraph tensors cannot be exposed
    tensors = sorted(types)
    if not tensors:  # nothing to sample: the data is not read
        return {}, data.count or 0
    rng = np.random.default_rng(seed)
    reservoirs = {name: Reservoir(cap, rng) for name in tensors}
    sess = user_session(exposed(model, types), label, native=False, folder=folder)
    bar = Progress("calibrating", data.count, progress)
    for feed in data.batches:
        outputs = [name for name in tensors if name not in feed]
        if outputs:
            for name, value in zip(outputs, run_checked(sess, outputs, feed, label)):
                reservoirs[name].add(value)
        for name in tensors:
            if name in feed:
                reservoirs[name].add(feed[name])
        bar.advance(sample_count(feed))
    bar.close()
    return reservoirs, bar.done
