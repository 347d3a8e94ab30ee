"""A bounded uniform sample of a stream of values, with its exact range (and each value's channel)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
