"""The fitter's inner loop in C (custom_ops/amos_fit.c, built by `make ops` into amos_onnx/_native/).

`rest`, `spike_matrix`, `split_costs`, `total_cost` and `sweep` are bit-identical to their numpy forms in
amos_onnx.fit.blocks, and `simulate` to amos_onnx.gate.simulate (the tests compare them on random and edge-case
inputs and on whole fits), and faster. Without the library, or with AMOS_ONNX_NATIVE_FIT=0, the fitter runs its
numpy loops. The library is loaded when this module is imported, in the parent process: a dlopen in a forked
fitting worker can hang (see amos_onnx.parallel).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from amos_onnx import gate
from amos_onnx.gate import GateParams

NATIVE_FIT_ENV = "AMOS_ONNX_NATIVE_FIT"  # set to 0 for the numpy loop even when the library is built
FIT_LIBRARY_ENV = "AMOS_ONNX_FIT_LIBRARY"  # path of another build of the library (the sanitizer build, say)
_LIBRARY_NAMES = ("libamos_fit.so", "libamos_fit.dylib", "amos_fit.dll")


@cache
def _library() -> ctypes.CDLL | None:
    folder = Path(__file__).resolve().parent.parent / "_native"
    override = os.environ.get(FIT_LIBRARY_ENV)
    if override and not Path(override).is_file():
        raise FileNotFoundError(f"{FIT_LIBRARY_ENV}={override}: no such library")
    paths = [Path(override)] if override else [folder / name for name in _LIBRARY_NAMES]
    for path in paths:
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            lib.amos_rest.restype = None
            lib.amos_rest.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int64,
                                                                                      ctypes.c_void_p, ctypes.c_void_p]
            lib.amos_split_costs.restype = ctypes.c_int
            lib.amos_split_costs.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_double] * 2 + [ctypes.c_int64] + [
                ctypes.c_void_p] * 6
            lib.amos_simulate32.restype = None
            lib.amos_simulate32.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                                                     ctypes.c_void_p, ctypes.c_void_p]
            lib.amos_spike_matrix.restype = None
            lib.amos_spike_matrix.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                                                      ctypes.c_void_p]
            lib.amos_numpy_sum.restype = ctypes.c_double
            lib.amos_numpy_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64]
            lib.amos_total_cost.restype = ctypes.c_int
            lib.amos_total_cost.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [
                ctypes.c_int64, ctypes.c_double, ctypes.c_void_p]
            lib.amos_sweep.restype = ctypes.c_int
            lib.amos_sweep.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_double] * 2 + [
                ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_double]
            return lib
    return None


_library()  # now, before any fork


def available() -> bool:
    """Whether the fitter runs its loop in C here (the library is built and not turned off)."""
    value = os.environ.get(NATIVE_FIT_ENV)  # asked once per kernel call: kept cheap when unset
    if value is not None and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    return _library() is not None


def _address(a: np.ndarray) -> int:
    """The address of a contiguous array's data: through the buffer protocol, a quarter of the cost of
    a.ctypes.data (the fitter passes about a million pointers per model), which serves where that fails (a
    read-only or empty array)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))  # type: ignore[arg-type]  # ndarray is a buffer
    except (TypeError, ValueError):
        return int(a.ctypes.data)


def rest(T: np.ndarray, h: np.ndarray, d: np.ndarray, v: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """amos_onnx.fit.blocks.rest in C: output and spike count (int8) of neurons start..K-1 from membrane v."""
    lib = _library()
    assert lib is not None
    T, h, d = (np.ascontiguousarray(T, np.float64), np.ascontiguousarray(h, np.float64),
               np.ascontiguousarray(d, np.float64))
    x = np.ascontiguousarray(v, np.float64)
    y = np.empty(x.shape, np.float64)
    s = np.empty(x.shape, np.int8)
    lib.amos_rest(_address(T), _address(h), _address(d), len(T), start, _address(x), x.size, _address(y), _address(s))
    return y, s


def simulate(params: GateParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """amos_onnx.gate.simulate (output, spikes per element), in C for a shared gate with finite resets and weights
    when the library is available, else gate.simulate itself (a gate of several chains chain by chain)."""
    if params.chains > 1:
        return gate.add_chains(simulate, params, x)
    lib = _library() if available() else None
    if lib is None or params.axis is not None or not (np.isfinite(params.resets).all()
                                                      and np.isfinite(params.weights).all()):
        return gate.simulate(params, x)
    T, h, d = (np.ascontiguousarray(a, np.float32) for a in (params.thresholds, params.resets, params.weights))
    v = np.ascontiguousarray(x, np.float32)
    y = np.empty(v.shape, np.float32)
    s = np.empty(v.shape, np.int32)
    lib.amos_simulate32(_address(T), _address(h), _address(d), T.size, _address(v), v.size, _address(y), _address(s))
    return y, s


def sample_error(params: GateParams, func: Callable[[np.ndarray], np.ndarray],
                 x: np.ndarray) -> tuple[float, float, float]:
    """amos_onnx.gate.sample_error, the gate run by simulate."""
    return gate.sample_error(params, func, x, simulator=simulate)


def spike_matrix(T: np.ndarray, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """amos_onnx.fit.blocks.spike_matrix in C: Z (len(x) x K, float64) with 1.0 where neuron j fires for x[i]."""
    lib = _library()
    assert lib is not None
    T, h = np.ascontiguousarray(T, np.float64), np.ascontiguousarray(h, np.float64)
    x = np.ascontiguousarray(x, np.float64).ravel()
    if T.size != h.size:
        raise ValueError("spike_matrix: T and h of different lengths")
    Z = np.empty((x.size, T.size), np.float64)
    lib.amos_spike_matrix(_address(T), _address(h), T.size, _address(x), x.size, _address(Z))
    return Z


class Split(NamedTuple):
    """One neuron's threshold split, per sample: the membrane v, the output before the neuron yb, the target, the
    weight w, and the later neurons' output (r0 / r1) and spikes (s0 / s1) when it skips / fires."""

    v: np.ndarray
    yb: np.ndarray
    target: np.ndarray
    w: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    s0: np.ndarray
    s1: np.ndarray


def split_costs(split: Split, lam: float, room_ulps: float,
                hint: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """amos_onnx.fit.blocks.split_costs in C: (vs, cost, se, sw, order). `hint`: an earlier order of these samples
    (an int64 permutation, kept from a call on the same samples) that the sort starts from; the result is the
    same with or without it."""
    lib = _library()
    assert lib is not None
    arrays = [np.ascontiguousarray(a, np.float64) for a in split[:6]]
    spikes = [np.ascontiguousarray(a, np.int8) for a in split[6:]]
    n = arrays[0].size
    if any(a.size != n for a in arrays + spikes):
        raise ValueError("split_costs: arrays of different lengths")
    if hint is not None and (hint.dtype != np.int64 or hint.size != n or not hint.flags.c_contiguous):
        raise ValueError("split_costs: the hint is not an order of these samples")
    vs, order = np.empty(n, np.float64), np.empty(n, np.int64)
    cost, se, sw = (np.empty(n + 1, np.float64) for _ in range(3))
    status = lib.amos_split_costs(*(_address(a) for a in arrays + spikes), float(lam), float(room_ulps), n,
                                  None if hint is None else _address(hint), _address(vs), _address(cost),
                                  _address(se), _address(sw), _address(order))
    if status != 0:
        raise MemoryError(f"split_costs: no memory for {n} samples")
    return vs, cost, se, sw, order


def total_cost(x: np.ndarray, target: np.ndarray, w: np.ndarray, lam: float, T: np.ndarray, h: np.ndarray,
               d: np.ndarray) -> float:
    """amos_onnx.fit.blocks.total_cost in C: the gate's cost on the training points (x, target, w)."""
    lib = _library()
    assert lib is not None
    x, target, w, T, h, d = (np.ascontiguousarray(a, np.float64) for a in (x, target, w, T, h, d))
    if not x.size == target.size == w.size or not T.size == h.size == d.size:
        raise ValueError("total_cost: arrays of different lengths")
    cost = ctypes.c_double()
    status = lib.amos_total_cost(_address(T), _address(h), _address(d), T.size, _address(x), _address(target),
                                 _address(w), x.size, float(lam), ctypes.byref(cost))
    if status != 0:
        raise MemoryError(f"total_cost: no memory for {x.size} training points")
    return float(cost.value)


def sweepable(params: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bool:
    """Whether sweep can update T, h and d in place: writable contiguous float64 arrays of one length."""
    return all(a.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable and a.size == params[0].size
               for a in params)


def sweep(x: np.ndarray, target: np.ndarray, w: np.ndarray, lam: float, params: tuple[np.ndarray, np.ndarray,
          np.ndarray], scale: float, room_ulps: float) -> None:
    """amos_onnx.fit.blocks.sweep in C: one sweep of the block descent over the training points (x, target, w),
    the gate's T, h and d (`params`: contiguous, writable float64 arrays of one length) updated in place."""
    lib = _library()
    assert lib is not None
    x, target, w = (np.ascontiguousarray(a, np.float64) for a in (x, target, w))
    if not x.size == target.size == w.size:
        raise ValueError("sweep: training arrays of different lengths")
    if not sweepable(params):
        raise ValueError("sweep: T, h and d must be writable contiguous float64 arrays of one length")
    k = params[0].size
    status = lib.amos_sweep(_address(x), _address(target), _address(w), x.size, float(lam), float(room_ulps),
                            *(_address(a) for a in params), k, float(scale))
    if status != 0:
        raise MemoryError(f"sweep: no memory for {x.size} training points")
