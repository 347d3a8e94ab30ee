"""The public functions that are not a stage of their own: the report files, and fitting a named function."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amos_onnx.data.dataset import DataSource
from amos_onnx.data.images import ImageOptions
from amos_onnx.errors import DataError, OptionError
from amos_onnx.find.gates import Activation
from amos_onnx.fit import library
from amos_onnx.fit.chains import fit_chains
from amos_onnx.fit.library import named_activations
from amos_onnx.fit.search import GRID_FLOOR, KICKS, FitResult, fit
from amos_onnx.gate import MAX_K
from amos_onnx.load import load_model
from amos_onnx.options import MAX_CHAINS, RayOptions, check_moves, check_range_weight
from amos_onnx.report import files as report_files
from amos_onnx.report.conversion import ConversionReport
from amos_onnx.report.validate import ValidateOptions, validate


def write_report(
    original: str | Path, converted: str | Path, data: DataSource | None, out: str | Path,
    conversion: ConversionReport | None = None, native: bool | None = None, images: ImageOptions | None = None,
    progress: bool | None = None, batch_axes: Mapping[str, int] | None = None,
    uncorrected: str | Path | None = None, ray: RayOptions | None = None,
) -> dict[str, object]:
    """Run both models on data, measure the spiking one, and write report.json, report.md and pictures to out.
    batch_axes: inputs whose samples lie on another axis than the first (--batch-axis). uncorrected: the same
    conversion without its compensation (convert's uncorrected_output), run too for each layer's error
    without it beside the error with it. ray: measure in shards on Ray actors (as validate does)."""
    options = ValidateOptions(native=native, images=images, progress=progress, batch_axes=dict(batch_axes or {}),
                              ray=ray)
    result = validate(original, converted, data, options)
    before = None if uncorrected is None else validate(original, uncorrected, data, options)
    return report_files.write(out, result, load_model(original), load_model(converted), conversion, before)


def named_function(name: str) -> Activation:
    """The named function `amos-onnx fit` knows, in any case (the registry's op spelling first: gelu is Gelu)."""
    named = named_activations()
    if name in named:
        return named[name]
    match = next((act for known, act in named.items() if known.lower() == name.lower()), None)
    if match is None:
        raise OptionError(f"unknown function {name!r}", hint=f"known: {', '.join(sorted(named))}")
    return match


def fit_function(
    name: str, k: int, fit_range: tuple[float, float] | None = None, samples: np.ndarray | None = None, *,
    spike_cost: float = 0.0, seed: int = 0, kicks: int | None = None, time_budget: float | None = None,
    range_weight: float = GRID_FLOOR, chains: int = 1,
) -> FitResult:
    """Fit a gate for a named function ("Sigmoid", "silu", ...) on a range and/or samples, warm-started from
    the shipped pre-fitted gate; that gate itself when nothing asks for another (default range, no samples,
    no spike cost, seed 0, default budget).

    spike_cost: the squared error one mean spike may cost (absolute, unlike convert's relative spike_penalty).
    The budget: `kicks` local-search moves (the fitter's default when None; each costs one short descent), and
    `time_budget` seconds that may stop the search earlier (results then depend on the machine's speed).
    range_weight: with samples, the share of the loss on a uniform grid over the range (convert's
    --range-weight). chains: a gate of that many chains of K neurons side by side (convert's --chains; never the
    shipped gate)."""
    act = named_function(name)
    if not 1 <= k <= MAX_K:
        raise OptionError(f"--k {k}: K must be between 1 and {MAX_K}")
    if samples is not None:
        samples = np.asarray(samples, np.float64).ravel()
        if samples.size == 0 or not np.all(np.isfinite(samples)):
            raise DataError("samples must be a non-empty array of finite values")
    if kicks is not None:
        check_moves("--kicks", kicks)
    if time_budget is not None and not time_budget > 0:
        raise OptionError(f"--time-budget {time_budget}: the time budget must be a positive number of seconds")
    if not (spike_cost >= 0 and np.isfinite(spike_cost)):
        raise OptionError(f"--spike-cost {spike_cost}: must be zero or positive")
    check_range_weight(range_weight)
    if not 1 <= chains <= MAX_CHAINS:
        raise OptionError(f"--chains {chains}: must be between 1 and {MAX_CHAINS}")
    if fit_range is not None:
        lo, hi = fit_range
    else:
        lo, hi = (float(samples.min()), float(samples.max())) if samples is not None else (act.lo, act.hi)
    if not lo < hi:
        raise OptionError(f"--range {lo} {hi}: LO must be below HI")
    search: dict[str, Any] = dict(spike_penalty=spike_cost, seed=seed, kicks=KICKS if kicks is None else kicks,
                                  time_budget=time_budget, range_weight=range_weight)
    if chains > 1:
        return fit_chains(act.func, k, chains, lo, hi, samples, relu_like=act.relu_like, **search)
    shipped = library.lookup(act, k)
    default = samples is None and spike_cost == 0.0 and seed == 0 and kicks is None and time_budget is None
    if shipped is not None and default and (lo, hi) == (act.lo, act.hi):
        return shipped
    warm = [shipped.params] if shipped is not None else []
    return fit(act.func, k, lo, hi, samples, relu_like=act.relu_like, warm=warm, **search)
