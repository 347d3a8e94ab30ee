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
        if flat.size == 0:
            return
        lo, hi = flat.min(), flat.max()  # NaN or an infinity anywhere shows in one of them
        every = bool(np.isfinite(lo) and np.isfinite(hi))
        finite = np.ones(0, bool) if every else np.isfinite(flat)
        values = flat if every else flat[finite]
        if values.size == 0:
            return
        cap = self.cap
        if self.axis is not None:
            cap = max(cap, min(CHANNEL_CAP * array.shape[self.axis], CHANNEL_TOTAL_CAP))
            self._channel_range(array)
        self.seen += values.size
        if not every:
            lo, hi = values.min(), values.max()
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
        pick, keys = self._candidates(values.size, cap)
        self._merge(values[pick], keys, self._channel_of(array, pick if every else np.flatnonzero(finite)[pick]), cap)

    def _candidates(self, n: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions among n new values that can enter the sample, with their keys: the same sample in
        distribution as a uniform key for every value, at a cost of the sample's size, not the batch's.

        Once full, only a value whose key falls below the largest kept key can enter: how many do is binomial,
        where they are uniform, their keys uniform below that bound. A batch larger than the sample can give it
        at most `cap` values: those with the `cap` smallest of its n keys, at uniform positions, their keys the
        first order statistics of n uniforms (cumulated exponential spacings)."""
        if self.values.size >= cap:
            bound = float(self.keys.max())
            pick = np.sort(self.rng.choice(n, int(self.rng.binomial(n, bound)), replace=False))
            return pick, self.rng.random(pick.size) * bound
        if n <= cap:
            return np.arange(n), self.rng.random(n)
        pick = np.sort(self.rng.choice(n, cap, replace=False))
        spacing = np.cumsum(self.rng.exponential(size=cap))
        keys = spacing / (spacing[-1] + self.rng.gamma(n + 1 - cap))
        return pick, self.rng.permutation(keys)

    def _channel_range(self, array: np.ndarray) -> None:
        """Each channel's exact min and max over the finite values."""
        assert self.axis is not None
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

    def _channel_of(self, array: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The channel of each flat position of the array (empty without an axis)."""
        if self.axis is None:
            return self.channels
        inner = int(np.prod(array.shape[self.axis + 1:], dtype=np.int64))
        return ((positions // inner) % array.shape[self.axis]).astype(np.int32)

    def _merge(self, values: np.ndarray, keys: np.ndarray, channels: np.ndarray, cap: int) -> None:
        """The kept values, keys (and channels) with the new ones, then the `cap` smallest keys."""
        values = np.concatenate([self.values, values])
        keys = np.concatenate([self.keys, keys])
        if self.axis is not None:
            channels = np.concatenate([self.channels, channels])
        if values.size > cap:
            keep = np.argpartition(keys, cap - 1)[:cap]
            keep.sort()
            values, keys = values[keep], keys[keep]
            channels = channels[keep] if self.axis is not None else channels
        self.values, self.keys, self.channels = values, keys, channels
