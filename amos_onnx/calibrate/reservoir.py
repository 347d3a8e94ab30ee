"""A bounded uniform sample of a stream of values, with its exact range (and each value's channel)."""

from __future__ import annotations

import hashlib
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
    channel_count: int = 0
    channel_lo: np.ndarray = field(default_factory=lambda: np.empty(0))  # exact min and max per channel (axis set)
    channel_hi: np.ndarray = field(default_factory=lambda: np.empty(0))
    seen: int = 0
    lo: float = np.inf
    hi: float = -np.inf
    # The sample as last merged (values, their keys, their channels when axis is set), the candidates drawn since
    # (merged when they could fill the sample, or fill it again: a few merges per stream, not one per batch), the
    # cap of the last batch and the largest key of a full sample at its last merge.
    _values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32), repr=False)
    _keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64), repr=False)
    _channels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32), repr=False)
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    _pending_size: int = 0
    _cap: int = 0
    _bound: float = 1.0
    _digest: tuple[np.ndarray, str] | None = field(default=None, repr=False, compare=False)  # digest(), of values

    @property
    def values(self) -> np.ndarray:
        self._flush()
        return self._values

    def digest(self) -> str:
        """A digest of the kept values (made once while they stay the same: they are replaced, never written)."""
        values = self.values
        if self._digest is None or self._digest[0] is not values:
            self._digest = values, digest(values)
        return self._digest[1]

    @property
    def keys(self) -> np.ndarray:
        self._flush()
        return self._keys

    @property
    def channels(self) -> np.ndarray:
        """Each value's channel (aligned with values; empty without an axis)."""
        self._flush()
        return self._channels

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
        channels = self._channel_of(array, pick if every else np.flatnonzero(finite)[pick])
        self._pending.append((values[pick], keys, channels))
        self._pending_size += pick.size
        self._cap = cap
        kept = self._values.size
        if self._pending_size >= cap or kept < cap <= kept + self._pending_size:
            self._flush()

    def merge(self, other: Reservoir) -> None:
        """Take in another reservoir of the same tensor (another shard of the data, sampled with its own rng):
        the union's exact range and count, and the `cap` values of the smallest keys of both samples, which is a
        uniform sample of everything both saw (each value's key is uniform on its own)."""
        if self.axis != other.axis:
            raise ValueError(f"cannot merge reservoirs with channel axes {self.axis} and {other.axis}")
        if other.channel_count:
            if self.channel_count and other.channel_count != self.channel_count:
                raise ValueError(f"channel axis {self.axis} has {other.channel_count} entries here, "
                                 f"{self.channel_count} before")
            if not self.channel_count:
                self.channel_lo, self.channel_hi = other.channel_lo.copy(), other.channel_hi.copy()
            self.channel_lo = np.minimum(self.channel_lo, other.channel_lo)
            self.channel_hi = np.maximum(self.channel_hi, other.channel_hi)
            self.channel_count = other.channel_count
        self.seen += other.seen
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        if other.values.size:
            self._pending.append((other.values, other.keys, other.channels))
            self._pending_size += other.values.size
            self._cap = max(self._cap, other._cap)
            self._flush()

    def order_by_key(self) -> None:
        """The kept values (keys, channels) in the order of their keys: one order for the same sample however
        the parts it was merged from came in."""
        order = np.argsort(self.keys, kind="stable")
        self._values, self._keys = self._values[order], self._keys[order]
        if self.axis is not None:
            self._channels = self._channels[order]

    def _candidates(self, n: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions among n new values that can enter the sample, with their keys: the same sample in
        distribution as a uniform key for every value, at a cost of the sample's size, not the batch's.

        Once full, only a value whose key falls below the largest kept key can enter (a bound at least as large
        serves too: the merge drops the rest): each does with that probability on its own
        (bernoulli_positions), its key uniform below the bound. A batch larger than the sample can give it
        at most `cap` values: those with the `cap` smallest of its n keys, at uniform positions, their keys the
        first order statistics of n uniforms (cumulated exponential spacings)."""
        if self._values.size >= cap:  # full: _bound is the largest kept key now or a larger one (before merges)
            bound = self._bound
            pick = bernoulli_positions(self.rng, n, bound)
            return pick, self.rng.random(pick.size) * bound
        if n <= cap:
            return np.arange(n), self.rng.random(n)
        pick = distinct(self.rng, n, cap)
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
            return np.empty(0, np.int32)
        inner = int(np.prod(array.shape[self.axis + 1:], dtype=np.int64))
        return ((positions // inner) % array.shape[self.axis]).astype(np.int32)

    def _flush(self) -> None:
        """The kept values, keys (and channels) with the pending ones, then the `cap` smallest keys."""
        if not self._pending:
            return
        parts = [(self._values, self._keys, self._channels), *self._pending]
        values, keys, channels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        self._pending, self._pending_size = [], 0
        cap = self._cap
        if values.size > cap:
            keep = np.zeros(values.size, bool)  # the kept positions in their order: a mask, not a sort
            keep[np.argpartition(keys, cap - 1)[:cap]] = True
            values, keys = values[keep], keys[keep]
            channels = channels[keep] if self.axis is not None else channels
        self._values, self._keys, self._channels = values, keys, channels
        if values.size >= cap:
            self._bound = float(keys.max())


def digest(values: np.ndarray) -> str:
    """A digest of an array's bytes (in C order)."""
    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()


def distinct(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """m distinct positions of range(n), uniform among all m-subsets, sorted; at a cost of m, not n, when m is
    small against n: draws with replacement until m distinct ones turn up (the set so drawn is uniform among
    sets of its size), then drops a uniform choice of the extra ones."""
    if m <= 0:
        return np.empty(0, np.int64)
    if 4 * m >= n:
        return np.sort(rng.choice(n, m, replace=False))
    pool = np.empty(0, np.int64)
    while pool.size < m:
        short = m - pool.size
        merged = np.sort(np.concatenate([pool, rng.integers(0, n, size=short + short * m // n + 8)]))
        pool = merged[np.concatenate([[True], merged[1:] != merged[:-1]])]
    if pool.size > m:
        pool = np.delete(pool, rng.choice(pool.size, pool.size - m, replace=False))
    return pool


def bernoulli_positions(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """The positions of range(n) each taken with probability p on its own (those whose uniform key falls below
    p), sorted: cumulated geometric gaps, at a cost of the count taken, not n."""
    if p >= 1.0:
        return np.arange(n)
    if p <= 0.0:
        return np.empty(0, np.int64)
    parts, last = [], -1
    while True:
        steps = last + np.cumsum(rng.geometric(p, size=int((n - 1 - last) * p * 1.1) + 16))
        parts.append(steps[steps < n])
        if steps[-1] >= n:
            return np.concatenate(parts)
        last = int(steps[-1])
