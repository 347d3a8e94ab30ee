"""The fitter's loop in C (custom_ops/amos_fit.c) against its numpy form: bit-identical, call by call and whole fits."""

from __future__ import annotations

import numpy as np
import pytest

from amos_onnx import gate
from amos_onnx.fit import blocks
from amos_onnx.fit import kernel as fit_kernel
from amos_onnx.fit.kernel import Split
from amos_onnx.fit.search import fit
from amos_onnx.gate import GateParams

pytestmark = pytest.mark.skipif(not fit_kernel.available(), reason="fitter library not built (make ops)")


def both(monkeypatch: pytest.MonkeyPatch, func, *args):  # type: ignore[no-untyped-def]
    """func(*args) with the numpy loop, then with the C one."""
    monkeypatch.setenv(fit_kernel.NATIVE_FIT_ENV, "0")
    assert not fit_kernel.available()
    reference = func(*args)
    monkeypatch.setenv(fit_kernel.NATIVE_FIT_ENV, "1")
    assert fit_kernel.available()
    return reference, func(*args)


def assert_same_bytes(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), np.flatnonzero(x.ravel() != y.ravel())[:5]


@pytest.mark.parametrize("shape,k,start", [((4000,), 10, 0), ((2, 1500), 16, 3), ((14, 37), 5, 1), ((0,), 4, 0),
                                           ((3,), 1, 0), ((513,), 6, 6), ((2, 1), 64, 63)])
def test_rest_is_bit_identical(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], k: int, start: int) -> None:
    rng = np.random.default_rng(k + start)
    T, h, d = np.sort(rng.normal(size=k)), rng.normal(size=k), rng.normal(size=k)
    d[::3] = -0.0  # a negative zero weight: z * d is -0.0 where the neuron skips
    v = rng.normal(size=shape) * 3
    v.ravel()[::7] = -0.0
    numpy_out, c_out = both(monkeypatch, blocks.rest, T, h, d, v, start)
    assert c_out[1].dtype == np.int8
    assert_same_bytes(numpy_out, c_out)


@pytest.mark.parametrize("n,k", [(4000, 10), (37, 1), (0, 4), (513, 16)])
def test_spike_matrix_is_bit_identical(monkeypatch: pytest.MonkeyPatch, n: int, k: int) -> None:
    """The weights' least-squares solve sees which neurons fire: the same 0.0 / 1.0 matrix from C as from numpy."""
    rng = np.random.default_rng(n + k)
    T, h = np.sort(rng.normal(size=k)), rng.normal(size=k)
    h[::3] *= -1
    x = np.round(rng.normal(size=n) * 3, 1)  # ties with the thresholds' neighbourhood
    x[::7] = -0.0
    reference, native = both(monkeypatch, blocks.spike_matrix, T, h, x)
    assert native.shape == (n, k) and native.dtype == np.float64
    assert reference.tobytes() == native.tobytes()


def test_rest_takes_read_only_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrays the buffer protocol will not hand out writable (read-only views) go to C by their ctypes address."""
    rng = np.random.default_rng(5)
    T, h, d, v = np.sort(rng.normal(size=8)), rng.normal(size=8), rng.normal(size=8), rng.normal(size=(3, 500))
    for a in (T, h, d, v):
        a.flags.writeable = False
    assert_same_bytes(*both(monkeypatch, blocks.rest, T, h, d, v, 0))


def test_error_only_costs_skip_the_spike_term_bit_for_bit() -> None:
    """Without a penalty the cost leaves out lam * s: the same bits as adding 0.0 * s (squares are never -0.0)."""
    rng = np.random.default_rng(6)
    w, target, y = rng.random(999), rng.normal(size=999), rng.normal(size=999)
    target[::5] = y[::5]  # exact zeros of the error, and of either sign in the difference
    y[::7] = np.nan
    s = rng.integers(0, 9, 999).astype(np.int8)
    for lam in (0.0, -0.0):
        assert blocks._costs(w, target, y, s, lam).tobytes() == (w * ((target - y) ** 2 + lam * s)).tobytes()
    assert blocks._costs(w, target, y, s, 0.5).tobytes() == (w * ((target - y) ** 2 + 0.5 * s)).tobytes()


def split_case(rng: np.random.Generator, trial: int) -> tuple:  # type: ignore[type-arg]
    n = int(rng.integers(0, 400))
    v = rng.normal(size=n) * 10.0 ** int(rng.integers(-3, 42))  # up to beyond float32's range (room = NaN there)
    if trial % 3 == 0:
        v = np.round(v, 1)  # ties: the sort must keep their order
    if trial % 4 == 1:  # a fitter's membranes: a few shifted runs of sorted inputs
        v = np.sort(v)
        v[n // 3:] -= 0.7 * abs(v).max(initial=1.0)
    if trial % 5 == 0 and n:
        v[rng.integers(0, n, 3)] = -0.0
    if trial % 7 == 0:
        v[: n // 2] = 0.0
    yb, target, r0, r1 = (rng.normal(size=n) for _ in range(4))
    w = rng.random(n)
    if trial % 4 == 0 and n:
        w[rng.integers(0, n, n // 2)] = 0.0
    w /= max(w.sum(), 1e-300)
    s0, s1 = (rng.integers(0, 16, n).astype(np.int8) for _ in range(2))
    return v, yb, target, w, r0, r1, s0, s1, [0.0, 0.005, 1.3][trial % 3]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # beyond float32: the numpy form warns
def test_split_costs_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        *arrays, lam = split_case(rng, trial)
        numpy_out, c_out = both(monkeypatch, blocks.split_costs, Split(*arrays), lam)
        assert_same_bytes(numpy_out, c_out)


def test_split_costs_sort_like_numpy() -> None:
    rng = np.random.default_rng(1)
    v = np.round(rng.normal(size=1000), 1)
    split = Split(v, *(np.zeros(1000),) * 2, np.full(1000, 1e-3), *(np.zeros(1000),) * 2,
                  *(np.zeros(1000, np.int8),) * 2)
    vs, cost, se, sw, order = fit_kernel.split_costs(split, 0.0, blocks.FLOAT32_ROOM)
    assert vs.tobytes() == np.sort(v, kind="stable").tobytes()
    assert order.tobytes() == np.argsort(v, kind="stable").tobytes()
    assert sw[0] == pytest.approx(1.0) and sw[-1] == 0.0 and cost.shape == (1001,)


def test_split_costs_give_the_same_whatever_order_the_sort_starts_from() -> None:
    """A hint only speeds the sort: from the order of the membranes before a neuron's reset (two runs after it),
    from a random permutation, with ties and NaN, the order is numpy's stable argsort and every output the same."""
    rng = np.random.default_rng(4)
    for trial in range(60):
        *arrays, lam = split_case(rng, trial)  # ties, NaN, shifted runs among them
        split, v = Split(*arrays), arrays[0]
        plain = fit_kernel.split_costs(split, lam, blocks.FLOAT32_ROOM)
        assert plain[4].tobytes() == np.argsort(v, kind="stable").tobytes()
        earlier = np.argsort(v + (v > np.nanmedian(v) if v.size else 0) * 0.3, kind="stable")  # before a reset
        for hint in (earlier, rng.permutation(v.size), plain[4], plain[4][::-1].copy()):
            assert_same_bytes(plain, fit_kernel.split_costs(split, lam, blocks.FLOAT32_ROOM, hint))


def test_a_hint_of_other_samples_is_refused() -> None:
    z = np.zeros(3)
    with pytest.raises(ValueError, match="not an order"):
        fit_kernel.split_costs(Split(z, z, z, z, z, z, *(np.zeros(3, np.int8),) * 2), 0.0, 4.0, np.arange(2))


def test_the_sweeps_sum_is_numpys() -> None:
    """The reset update's costs are np.sum over rows (pairwise, not in order): the C sum gives the same bits for
    every length through the pairwise blocks' edges (8, 128, their multiples) and beyond numpy's 8,192 buffer, on
    terms over many orders of magnitude and of both signs (zeros too)."""
    lib = fit_kernel._library()
    assert lib is not None
    rng = np.random.default_rng(9)
    for n in [*range(0, 300), 1000, 1023, 1024, 1025, 8191, 8192, 8193, 16386, 40000]:
        rows = rng.normal(size=(2, n)) * 10.0 ** rng.uniform(-12, 6, (2, n))
        rows[1, ::5] = -0.0
        expected = np.sum(rows, axis=1)
        for row, want in zip(rows, expected):
            got = lib.amos_numpy_sum(fit_kernel._address(row), n)
            assert np.float64(got).tobytes() == want.tobytes(), n


def sweep_case(rng: np.random.Generator, trial: int) -> tuple[blocks.Problem, tuple[np.ndarray, ...], float]:
    """A training set and gate for one sweep: few points (a reset's sums below 8 and 128 terms) to thousands,
    sorted as the fitter's or not, with ties, some of tiny weight (reset candidates whose costs differ by less
    than 1e-12 of them: the ties' rule decides), weights over many magnitudes; neurons that fire for all points or
    none, negative resets and weights of -0.0; no penalty, a small one, a large one. (The order of the sums' terms
    rarely decides a choice here: test_the_sweeps_sum_is_numpys holds the sum itself to np.sum.)"""
    n = int(rng.choice([0, 1, 5, 40, 300, 4000]))
    x = rng.normal(size=n) * 3
    if trial % 2:
        x = np.sort(np.round(x, 1))  # sorted, with ties
    target = np.tanh(x) + (rng.normal(size=n) if trial % 3 == 0 else 0.0)
    w = rng.random(n)
    if trial % 4 < 2:  # near ties: candidates that differ only at points of tiny weight
        w[::3] *= 1e-17
    if trial % 4 == 2:
        w *= 10.0 ** rng.uniform(-12, 0, n)
    w /= max(w.sum(), 1e-300)
    k = int(rng.integers(1, 12))
    T, h, d = np.sort(rng.normal(size=k) * 2), rng.normal(size=k), rng.normal(size=k) * 0.3
    h[::4] *= -1
    d[1::5] = -0.0
    if k > 2:
        T[0], T[-1] = -50.0, 50.0  # fires for every point, for none
    return blocks.Problem(x, target, w, [0.0, 0.005, 1.3][trial % 3]), (T, h, d), float(rng.uniform(0.5, 8))


def test_total_costs_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate's cost on the training points, from C and from numpy: the same float, bit for bit, with and without
    a penalty, for float32 parameters (a gate as shipped) too."""
    rng = np.random.default_rng(10)
    for trial in range(60):
        p, (T, h, d), _ = sweep_case(rng, trial)
        for params in ((T, h, d), tuple(a.astype(np.float32) for a in (T, h, d))):
            reference, native = both(monkeypatch, blocks.total_cost, p, *params)
            assert isinstance(native, float) and np.float64(reference).tobytes() == np.float64(native).tobytes()


def test_sweeps_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """blocks.sweep in C against its numpy loop: the same T, h and d, bit for bit, after each of three sweeps."""
    rng = np.random.default_rng(3)
    for trial in range(120):
        p, params, scale = sweep_case(rng, trial)

        def swept(p=p, params=params, scale=scale):  # type: ignore[no-untyped-def]
            T, h, d = (a.copy() for a in params)
            states = []
            for _ in range(3):
                blocks.sweep(p, T, h, d, scale)
                states += [T.copy(), h.copy(), d.copy()]
            return tuple(states)

        assert_same_bytes(*both(monkeypatch, swept))


def test_a_sweep_of_arrays_it_cannot_write_runs_in_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """T, h, d that C cannot update in place (a strided view) take the numpy loop, with the same result; the C
    sweep itself refuses them (float32 here)."""
    p, (T, h, d), scale = sweep_case(np.random.default_rng(8), 1)
    reference = [a.copy() for a in (T, h, d)]
    blocks.sweep(p, *reference, scale)
    wide = np.stack([T, np.zeros_like(T)], axis=1)[:, 0]  # not contiguous
    h2, d2 = h.copy(), d.copy()
    blocks.sweep(p, wide, h2, d2, scale)
    assert_same_bytes(tuple(reference), (wide.copy(), h2, d2))
    with pytest.raises(ValueError, match="writable contiguous float64"):
        fit_kernel.sweep(p.x, p.target, p.w, p.lam, (T.astype(np.float32), h, d), scale, blocks.FLOAT32_ROOM)


@pytest.mark.parametrize("func,k,lo,hi,penalty", [(np.tanh, 8, -4.0, 4.0, 0.0),
                                                  (lambda x: x / (1 + np.exp(-x)), 10, -6.0, 6.0, 0.005)])
def test_whole_fits_are_identical(  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch, func, k, lo, hi, penalty) -> None:
    samples = np.random.default_rng(2).normal(0, 2, 3000)
    a, b = both(monkeypatch, lambda: fit(func, k, lo, hi, samples, spike_penalty=penalty, kicks=20, seed=1))
    for name in ("thresholds", "resets", "weights"):
        assert np.asarray(getattr(a.params, name)).tobytes() == np.asarray(getattr(b.params, name)).tobytes()
    assert (a.mse, a.max_error, a.mean_spikes) == (b.mse, b.max_error, b.mean_spikes)


@pytest.mark.parametrize("shape,k", [((200_001,), 5), ((3, 700), 16), ((5, 2, 3), 1), ((0,), 4), ((1030,), 64)])
def test_simulate_is_the_gates_numpy_simulation_bit_for_bit(monkeypatch: pytest.MonkeyPatch,
                                                             shape: tuple[int, ...], k: int) -> None:
    """Random gates (negative weights and resets among them) on inputs with NaN, infinities, -0.0 and values at
    the thresholds themselves; what the C form does not take (per-channel gates, an infinite weight) goes to
    gate.simulate."""
    rng = np.random.default_rng(k)
    params = GateParams(rng.normal(0, 2, k), rng.normal(0.5, 1, k), rng.normal(0, 1, k))
    x = rng.normal(0, 3, shape).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size >= 8:
        flat[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, *params.thresholds[:1], np.float32(1e30), np.float32(-1e30)]
        flat[8::97] = params.thresholds[rng.integers(0, k, flat[8::97].size)]
    assert_same_bytes(gate.simulate(params, x), fit_kernel.simulate(params, x))
    assert_same_bytes(gate.simulate(params, x), fit_kernel.simulate(params, x.astype(np.float64)))
    channels = GateParams(np.tile(params.thresholds, (2, 1)), np.tile(params.resets, (2, 1)),
                          np.tile(params.weights, (2, 1)), axis=0)
    infinite = GateParams(params.thresholds, params.resets, np.full(k, np.inf))
    for other, values in ((channels, np.stack([x.ravel(), -x.ravel()])), (infinite, x)):
        assert_same_bytes(gate.simulate(other, values), fit_kernel.simulate(other, values))
    monkeypatch.setenv(fit_kernel.NATIVE_FIT_ENV, "0")
    assert_same_bytes(gate.simulate(params, x), fit_kernel.simulate(params, x))


def test_mismatched_lengths_are_refused() -> None:
    z = np.zeros(3)
    with pytest.raises(ValueError, match="different lengths"):
        fit_kernel.split_costs(Split(z, z, z, z, z, np.zeros(2), *(np.zeros(3, np.int8),) * 2), 0.0, 4.0)
