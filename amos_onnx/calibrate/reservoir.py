"""Run the original model on calibration data and keep a bounded sample of what each site sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from amos_onnx.data.dataset import Dataset, sample_count
from amos_onnx.data.progress import Progress
from amos_onnx.find.sites import Site
from amos_onnx.runtime import run_checked, user_session

DEFAULT_CAP = 100_000  # values kept per site tensor, a uniform random sample of all it saw
CHANNEL_CAP = 4096  # with channels: values kept per channel on average (the cap grows to this times C) ...
CHANNEL_TOTAL_CAP = 1_000_000  # ... up to this many per site tensor (2,048 channels: 488 each)


@dataclass
class Reservoir:
    """A uniform random sample of at most `cap` values of a stream, plus exact min, max and count. With an
    `axis`, each kept value's index along it (its channel) is kept too, and the cap grows to CHANNEL_CAP values
    per channel (CHANNEL_TOTAL_CAP at most), with each channel's exact min and max."""

    cap: int
    rng: np.random.Generator
    axis: int | None = None
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    channels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # aligned with values (axis set)
    channel_count: int = 0
    channel_lo: np.ndarray = field(default_factory=lambda: np.empty(0))  # exact min and max per channel (axis set)
    channel_hi: np.ndarray = field(default_factory=lambda: np.empty(0))
    seen: int = 0
    lo: float = np.inf
    hi: float = -np.inf

    def add(self, batch: np.ndarray) -> None:
        array = np.asarray(batch, np.float32)
        flat = array.ravel()
        finite = np.isfinite(flat)
        flat = flat[finite]
        if flat.size == 0:
            return
        cap, channels = self.cap, self.channels
        if self.axis is not None:
            count = array.shape[self.axis]
            if self.channel_count and count != self.channel_count:
                raise ValueError(f"channel axis {self.axis} has {count} entries, earlier batches {self.channel_count}")
            if not self.channel_count:
                self.channel_lo, self.channel_hi = np.full(count, np.inf), np.full(count, -np.inf)
            self.channel_count = count
            per = np.moveaxis(array, self.axis, 0).reshape(count, -1)
            ok = np.isfinite(per)
            self.channel_lo = np.minimum(self.channel_lo, np.where(ok, per, np.inf).min(axis=1, initial=np.inf))
            self.channel_hi = np.maximum(self.channel_hi, np.where(ok, per, -np.inf).max(axis=1, initial=-np.inf))
            index = np.arange(count, dtype=np.int32).reshape((-1,) + (1,) * (array.ndim - 1 - self.axis))
            channels = np.concatenate([channels, np.broadcast_to(index, array.shape).ravel()[finite]])
            cap = max(cap, min(CHANNEL_CAP * count, CHANNEL_TOTAL_CAP))
        self.seen += flat.size
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        keys = self.rng.random(flat.size)
        values = np.concatenate([self.values, flat])
        keys = np.concatenate([self.keys, keys])
        if values.size > cap:
            keep = np.argpartition(keys, cap - 1)[:cap]
            keep.sort()
            values, keys = values[keep], keys[keep]
            channels = channels[keep] if self.axis is not None else channels
        self.values, self.keys, self.channels = values, keys, channels


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
    per_channel: bool = False, keep: list[dict[str, np.ndarray]] | None = None, keep_samples: int = 0,
    keep_bytes: int = 0,
) -> tuple[dict[str, Reservoir], int]:
    """Sample the input tensor of every converting site over all of `data`, batch by batch: the reservoirs
    and the number of samples seen. Memory stays at one batch plus `cap` values per site. With `per_channel`,
    the reservoir of a tensor with a static channel axis (Site.channel_axis, Site.channels) keeps each value's
    channel too. `keep`: the first batches are appended to it, until it holds `keep_samples` samples or
    `keep_bytes` bytes (at least one batch), for measuring the converted sites' effect (focus.effects)."""
    types = {s.input: s.dtype for s in sites if s.converts and not s.graph}  # subgraph tensors cannot be exposed
    tensors = sorted(types)
    if not tensors:  # nothing to sample: the data is not read
        return {}, data.count or 0
    rng = np.random.default_rng(seed)
    axes = {s.input: s.channel_axis for s in sites if per_channel and s.converts and not s.graph and s.channels}
    reservoirs = {name: Reservoir(cap, rng, axes.get(name)) for name in tensors}
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
        if keep is not None and sum(map(sample_count, keep)) < keep_samples \
                and sum(a.nbytes for f in keep for a in f.values()) < keep_bytes:
            keep.append(feed)
        bar.advance(sample_count(feed))
    bar.close()
    return reservoirs, bar.done
