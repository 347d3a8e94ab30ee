"""convert() and inspect(): the stages in order (load, find, calibrate, fit, rewrite, save)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from .calibrate import calibrate
from .composite import NearMiss
from .errors import OptionError
from .find import Site, find_sites
from .fit import fit_sites
from .gates import selectable_ops
from .inputs import load_npz
from .load import FUNCTION_MIN_OPSET, default_opset, load_model, raise_opset, read_model, with_shapes
from .neuron import MAX_K
from .report import ConversionReport, rewrite_notes, site_reports
from .rewrite import EMIT_FORMS, rewrite
from .save import check_output_path, save_model


def _check_ops(option: str, ops: set[str] | None) -> None:
    known = set(selectable_ops())
    unknown = sorted((ops or set()) - known)
    if unknown:
        raise OptionError(f"{option}: unknown activation op {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}")


def check_options(k: int | None, emit: str, only: set[str] | None, skip: set[str] | None) -> None:
    """Raise OptionError for an out-of-range K, an unknown emission form or unknown op names."""
    if k is not None and not 1 <= k <= MAX_K:
        raise OptionError(f"--k {k}: K must be between 1 and {MAX_K}")
    if emit not in EMIT_FORMS:
        raise OptionError(f"--emit {emit}: must be one of {', '.join(EMIT_FORMS)}")
    _check_ops("--only", only)
    _check_ops("--skip", skip)


def _find(
    model: onnx.ModelProto, only: set[str] | None, skip: set[str] | None
) -> tuple[list[Site], list[NearMiss], dict[str, int | None]]:
    graph = gs.import_onnx(with_shapes(model))
    sites, misses = find_sites(graph, default_opset(model), only, skip)
    tensors = graph.tensors()
    ranks = {}
    for site in sites:
        shape = tensors[site.input].shape if site.input in tensors else None
        ranks[site.name] = len(shape) if shape is not None else None
    return sites, misses, ranks


def inspect(model_path: str | Path, *, only: set[str] | None = None, skip: set[str] | None = None) -> ConversionReport:
    """The activation sites of a model and whether each would convert; writes nothing."""
    check_options(None, "function", only, skip)
    sites, misses, _ = _find(load_model(model_path), only, skip)
    report = ConversionReport(str(model_path), None, site_reports(sites, {}, "would convert"))
    report.near_misses = [(m.node, m.reason) for m in misses]
    return report


def convert(
    model_path: str | Path,
    output_path: str | Path,
    *,
    k: int | None = None,
    calib: str | Path | None = None,
    emit: str = "function",
    only: set[str] | None = None,
    skip: set[str] | None = None,
    seed: int = 0,
) -> ConversionReport:
    """Convert every activation of a model into an AMOS spiking gate and save the result."""
    check_options(k, emit, only, skip)
    inputs = [model_path] + ([calib] if calib else [])
    output_path = check_output_path(output_path, inputs)
    model, files = read_model(model_path)
    check_output_path(output_path, [*inputs, *files])
    opset_before = default_opset(model)
    if emit == "function":
        model = raise_opset(model, FUNCTION_MIN_OPSET)
    sites, misses, ranks = _find(model, only, skip)
    reservoirs = {}
    if calib is not None:
        feeds, _ = load_npz(calib, model)
        reservoirs = calibrate(model, sites, feeds, seed=seed, label=f"{model_path} with {calib}")
    fits = fit_sites(sites, reservoirs, k, seed)
    result = rewrite(model, sites, {name: f.params for name, f in fits.items()}, ranks, emit)
    save_model(model, output_path)
    report = ConversionReport(str(model_path), str(output_path), site_reports(sites, fits, "converted"), emit)
    if calib is not None:
        report.calibration = str(calib)
        report.calibration_samples = next(iter(feeds.values())).shape[0]
    report.ir_version = result.ir_version
    report.near_misses = [(m.node, m.reason) for m in misses]
    report.notes += rewrite_notes(result)
    if default_opset(model) != opset_before:
        report.notes.insert(0, f"opset raised from {opset_before} to {default_opset(model)} (the gate function needs {FUNCTION_MIN_OPSET})")
    return report
