"""The sets a fit makes whatever K (fit.grids), kept for the next fit of the same function, range and samples: a fit
made after others is the fit made alone, to the bit, and a budget's fits at several K are each K's fits alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from amos_onnx.fit.grids import Grids
from amos_onnx.fit.search import fit
from amos_onnx.fit.sites import fit_sites, fit_sites_at
from amos_onnx.gate import GateParams
from amos_onnx.options import FitOptions
from amos_onnx.pipeline import plan

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _same(a: GateParams, b: GateParams) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in ("thresholds", "resets", "weights"))


def _alone(*args: object, **keywords: object) -> GateParams:
    Grids._last = None
    return fit(*args, **keywords).params  # type: ignore[arg-type]


@pytest.mark.parametrize("func, relu_like, penalty", [(relu, True, 0.0), (np.tanh, False, 0.0),
                                                      (np.tanh, False, 1e-3)])
def test_fits_at_several_k_one_after_another_are_each_fit_made_alone(func, relu_like: bool,  # type: ignore[no-untyped-def]
                                                                     penalty: float) -> None:
    """With a spike penalty, tanh's fits here also take fit's second pass, with points beyond the range (tanh
    saturates there): its sets are kept beside the first pass's."""
    samples = np.random.default_rng(5).normal(0.5, 1.5, 30_000).astype(np.float32)
    lo, hi = float(samples.min()), float(samples.max())
    keywords = {"relu_like": relu_like, "spike_penalty": penalty, "kicks": 4}
    Grids._last = None
    in_turn = [fit(func, k, lo, hi, samples, **keywords).params for k in (5, 4, 3)]
    kept = Grids._last
    assert kept is not None and kept.func is func  # made once, used by all three
    assert any(key[0] == "problem" and key[2] for key in kept._made) == (penalty > 0)
    for k, params in zip((5, 4, 3), in_turn):
        assert _same(params, _alone(func, k, lo, hi, samples, **keywords))


def test_the_sets_are_kept_for_the_same_function_range_and_samples_only() -> None:
    samples = np.random.default_rng(6).normal(0, 1, 1000).astype(np.float32)
    Grids._last = None
    first = Grids.of(np.tanh, -3.0, 3.0, samples)
    assert Grids.of(np.tanh, -3.0, 3.0, samples.copy()) is first  # samples compared by content
    changed = samples.copy()
    changed[17] += 1.0
    made = [first]
    for func, hi, given in ((np.tanh, 3.0, changed), (np.tanh, 3.5, changed), (relu, 3.5, changed),
                            (relu, 3.5, None)):
        other = Grids.of(func, -3.0, hi, given)
        assert all(other is not earlier for earlier in made) and Grids._last is other
        made.append(other)
    penalised, plain = first.problem(0.25, 2049), first.problem(0.0, 2049)
    assert penalised.lam == 0.25 and plain.lam == 0.0 and penalised.x is plain.x and penalised.target is plain.target


def test_a_budgets_fits_at_several_k_are_each_ks_fits_alone() -> None:
    """fit_sites_at runs one site's fits at several K one after another in one worker: they equal fit_sites at
    each K, made with nothing kept."""
    p = plan(DIGITS, calib=TRAIN)
    names = [s.name for s in p.sites if s.converts]
    choices = [dict.fromkeys(names, k) for k in (5, 3, 4)]
    together = fit_sites_at(p.sites, p.reservoirs, FitOptions(), choices)
    for choice, fits in zip(choices, together):
        Grids._last = None
        alone = fit_sites(p.sites, p.reservoirs, FitOptions(k_per_site=choice))
        assert fits.keys() == alone.keys() == set(names)
        for name in names:
            assert fits[name].params.k == choice[name] and _same(fits[name].params, alone[name].params)
