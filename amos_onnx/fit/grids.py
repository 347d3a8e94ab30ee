"""The point sets a fit scores gates on that do not depend on K: the samples cleaned and sorted, the training and
check sets, the sliver grid and the quality grid, made from the function, the range and the samples alone.

A site's fits at several K (a time budget's curves) need the same sets, and sites._fitted runs them one after
another in one worker, so the last function, range and samples' sets are kept (Grids.of) and made when first asked
for. The kept arrays are shared between fits: nothing may write to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from amos_onnx.calibrate.reservoir import digest
from amos_onnx.fit.blocks import Problem
from amos_onnx.fit.tails import TAIL_WEIGHT, tail_points

Func = Callable[[np.ndarray], np.ndarray]

# Share of a calibrated fit's loss on a uniform grid over the whole range (the default of convert's
# --range-weight), so inputs rarer than the samples show still count; a larger share buys the top of the range
# with resolution where the data is.
GRID_FLOOR = 0.01


def finite(samples: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A fit's samples as float64 without NaN or infinities, as given and sorted (sorted once for every set)."""
    if samples is None:
        return np.empty(0), np.empty(0)
    s = samples.astype(np.float64).ravel()
    s = s[np.isfinite(s)]
    return s, np.sort(s)


def ranks(finite: np.ndarray) -> np.ndarray | None:
    """Where the local search's kicks aim: 257 quantiles of the finite samples (None without samples)."""
    return np.quantile(finite, np.linspace(0, 1, 257)) if finite.size else None


def problem(func: Func, lo: float, hi: float, samples: tuple[np.ndarray, np.ndarray], lam: float, points: int,
            tails: bool = False, sort: bool = True, floor: float = GRID_FLOOR) -> Problem:
    """Training points: the range grid alone, or samples (1 - floor of the weight) plus the grid as a floor;
    with `tails`, where f saturates beyond the range, points out there too (TAIL_WEIGHT). `samples`: finite's.
    `sort`: by x, for the descents' sorts of membranes (a set only scored need not be)."""
    grid = np.linspace(lo, hi, points)
    s, ordered = samples
    if s.size == 0:
        x, w = grid, np.full(grid.size, 1.0 / grid.size)
    else:
        if s.size > points:  # evenly spaced ranks: the samples' distribution without a draw's noise
            s = ordered[np.linspace(0, s.size - 1, points).round().astype(np.int64)]
        x = np.concatenate([s, grid])
        w = np.concatenate([np.full(s.size, (1 - floor) / s.size), np.full(grid.size, floor / grid.size)])
    tail = tail_points(func, lo, hi) if tails else np.empty(0)
    if tail.size:
        x = np.concatenate([x, tail])
        w = np.concatenate([w * (1 - TAIL_WEIGHT), np.full(tail.size, TAIL_WEIGHT / tail.size)])
    if sort:  # the fitter's sorts of membranes then find a few long runs
        order = np.argsort(x, kind="stable")
        x, w = x[order], w[order]
    with np.errstate(over="ignore"):
        target = np.asarray(func(x), np.float64)
    return Problem(x=x, target=target, w=w, lam=lam)


def dense(func: Func, lo: float, hi: float, points: int) -> Problem:
    """A uniform grid of `points` over the range, equally weighted: where slivers are looked for."""
    with np.errstate(over="ignore"):
        x = np.linspace(lo, hi, points)
        return Problem(x, np.asarray(func(x), np.float64), np.full(points, 1.0 / points), 0.0)


def quality_grid(func: Func, lo: float, hi: float, points: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 grid a gate's quality is reported on, and f on it (search.evaluate)."""
    grid = np.linspace(lo, hi, points, dtype=np.float32)
    return grid, func(grid.astype(np.float64))


def _key(lo: float, hi: float, samples: np.ndarray | None) -> tuple[object, ...]:
    """What the sets depend on besides the function: the range and the samples, by content."""
    return lo, hi, () if samples is None else (samples.dtype.str, samples.shape, digest(samples))


class Grids:
    """One function's, range's and samples' sets, each made when first asked for."""

    _last: Grids | None = None  # kept for the next fit (of)

    def __init__(self, func: Func, lo: float, hi: float, samples: np.ndarray | None,
                 key: tuple[object, ...] | None = None) -> None:
        self.func, self.lo, self.hi, self.samples = func, lo, hi, samples
        self.key = key if key is not None else _key(lo, hi, samples)
        self._made: dict[tuple[object, ...], Any] = {}

    @classmethod
    def of(cls, func: Func, lo: float, hi: float, samples: np.ndarray | None) -> Grids:
        """The sets of the last fit when it had the same function (the same object), range and samples (by
        content), else new ones, kept in their place."""
        last, key = cls._last, _key(lo, hi, samples)
        if last is not None and last.func is func and last.key == key:
            return last
        cls._last = cls(func, lo, hi, samples, key)
        return cls._last

    def _get(self, key: tuple[object, ...], make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def finite(self) -> tuple[np.ndarray, np.ndarray]:
        """finite(samples)."""
        return self._get(("finite",), lambda: finite(self.samples))

    def ordered(self) -> np.ndarray:
        """The finite samples sorted as given (float32 when they are), for quantiles."""
        s = self.samples
        return self._get(("ordered",), lambda: np.empty(0) if s is None else np.sort(s[np.isfinite(s)], axis=None))

    def ranks(self) -> np.ndarray | None:
        """ranks(ordered())."""
        return self._get(("ranks",), lambda: ranks(self.ordered()))

    def problem(self, lam: float, points: int, tails: bool = False, sort: bool = True,
                floor: float = GRID_FLOOR) -> Problem:
        """problem(...) on these samples, with spike penalty `lam`."""
        made = self._get(("problem", points, tails, sort, floor),
                         lambda: problem(self.func, self.lo, self.hi, self.finite(), 0.0, points, tails, sort, floor))
        return Problem(made.x, made.target, made.w, lam)

    def dense(self, points: int) -> Problem:
        """dense(...) over this range."""
        return self._get(("dense", points), lambda: dense(self.func, self.lo, self.hi, points))

    def quality_grid(self, points: int) -> tuple[np.ndarray, np.ndarray]:
        """quality_grid(...) over this range."""
        return self._get(("quality", points), lambda: quality_grid(self.func, self.lo, self.hi, points))
