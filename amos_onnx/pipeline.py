"""convert() and inspect(): the stages in order (load, find, calibrate, fit, rewrite, save)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from amos_onnx.calibrate.reservoir import Reservoir, calibrate
from amos_onnx.data.dataset import DataSource, open_data
from amos_onnx.data.images import ImageOptions
from amos_onnx.errors import OptionError, OutputPathError
from amos_onnx.find.composite import NearMiss
from amos_onnx.find.gates import selectable_ops
from amos_onnx.find.sites import Site, find_sites, quantized_ops
from amos_onnx.fit import focus
from amos_onnx.fit.sites import AUTO, DEFAULT_TARGET_MSE, REFIT_KICKS, Refocus, SiteFit, fit_sites
from amos_onnx.gate import MAX_K
from amos_onnx.load import FUNCTION_MIN_OPSET, default_opset, load_model, raise_opset, read_model, with_shapes
from amos_onnx.report.conversion import ConversionReport, rewrite_notes, site_reports
from amos_onnx.rewrite.graph import EMIT_FORMS, rewrite
from amos_onnx.save import check_output_path, data_path, save_model


def _check_ops(option: str, ops: set[str] | None) -> None:
    known = set(selectable_ops())
    unknown = sorted((ops or set()) - known)
    if unknown:
        raise OptionError(f"{option}: unknown activation op {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}")


def check_options(k: int | str | None, emit: str, only: set[str] | None, skip: set[str] | None,
                  k_per_op: dict[str, int] | None = None, target_mse: float = DEFAULT_TARGET_MSE) -> None:
    """Raise OptionError for an out-of-range K, an unknown emission form or unknown op names."""
    if isinstance(k, str) and k != AUTO:
        raise OptionError(f"--k {k}: give a number of neurons or 'auto'")
    if isinstance(k, int) and not 1 <= k <= MAX_K:
        raise OptionError(f"--k {k}: K must be between 1 and {MAX_K}")
    for op, value in (k_per_op or {}).items():
        if not 1 <= value <= MAX_K:
            raise OptionError(f"--k-per-op {op}={value}: K must be between 1 and {MAX_K}")
    _check_ops("--k-per-op", set(k_per_op or {}))
    if not target_mse > 0:
        raise OptionError(f"--target-mse {target_mse}: must be positive")
    if emit not in EMIT_FORMS:
        raise OptionError(f"--emit {emit}: must be one of {', '.join(EMIT_FORMS)}")
    _check_ops("--only", only)
    _check_ops("--skip", skip)


def _find(
    model: onnx.ModelProto, only: set[str] | None, skip: set[str] | None, channel_axis: int | None = None
) -> tuple[list[Site], list[NearMiss], dict[str, int | None], list[str]]:
    graph = gs.import_onnx(with_shapes(model))
    sites, misses = find_sites(graph, default_opset(model), only, skip, channel_axis)
    notes = []
    quantized = quantized_ops(graph)
    if quantized:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(quantized.items()))
        notes.append(f"quantized graph ({ops}) left alone: activations fused into quantized ops (a Relu folded into "
                     "QLinearConv's output range, say) cannot convert; convert the float model before quantizing")
    return sites, misses, {site.name: site.rank for site in sites}, notes


def inspect(model_path: str | Path, *, only: set[str] | None = None, skip: set[str] | None = None) -> ConversionReport:
    """The activation sites of a model and whether each would convert; writes nothing."""
    check_options(None, "function", only, skip)
    sites, misses, _, notes = _find(load_model(model_path, weights=False), only, skip)
    report = ConversionReport(str(model_path), None, site_reports(sites, {}, "would convert"))
    report.near_misses = [(m.node, m.reason) for m in misses]
    report.notes += notes
    return report


@dataclass
class Plan:
    """A model read, its sites found and (with data) calibrated: everything a conversion needs but the fits.
    One plan can be written out with several sets of fits (K sweeps, say) without reading the data again."""

    model_path: Path
    model: onnx.ModelProto
    emit: str
    sites: list[Site]
    misses: list[NearMiss]
    ranks: dict[str, int | None]
    notes: list[str]
    files: list[Path]
    opset_before: int
    reservoirs: dict[str, Reservoir] = field(default_factory=dict)
    samples: int = 0
    calibration: str | None = None
    inputs: list[Path] = field(default_factory=list)  # every file read: never to be overwritten
    feeds: list[dict] = field(default_factory=list)  # the first calibration batches (focus.KEEP_SAMPLES)


def plan(
    model_path: str | Path,
    *,
    calib: DataSource | None = None,
    emit: str = "function",
    only: set[str] | None = None,
    skip: set[str] | None = None,
    seed: int = 0,
    images: ImageOptions | None = None,
    progress: bool | None = None,
    output: str | Path | None = None,
    per_channel: bool = False,
    channel_axis: int | None = None,
) -> Plan:
    """Load, find and calibrate (the stages before fitting); `output`, when given, is checked before the
    calibration (it must not overwrite any file read). per_channel: the calibration keeps each value's channel
    (along the site input's feature axis, find.feature_axis, or `channel_axis` for every site, where its size
    is static), for fit_sites(per_channel=True)."""
    check_options(None, emit, only, skip)
    if per_channel and calib is None:
        raise OptionError("--per-channel needs --calib: each channel's gate is fitted on that channel's values")
    if channel_axis is not None and not per_channel:
        raise OptionError(f"--channel-axis {channel_axis}: only with --per-channel")
    model, files = read_model(model_path)
    data = open_data(calib, model, images) if calib is not None else None
    opset_before = default_opset(model)
    if emit == "function":
        model = raise_opset(model, FUNCTION_MIN_OPSET)
    sites, misses, ranks, find_notes = _find(model, only, skip, channel_axis)
    result = Plan(Path(model_path), model, emit, sites, misses, ranks, find_notes, files, opset_before,
                  inputs=[Path(model_path), *files, *(data.paths if data else ())])
    if output is not None:
        _check_output(result, output)
    if data is not None:
        result.reservoirs, result.samples = calibrate(
            model, sites, data, seed=seed, label=f"{model_path} with {data.description}", progress=progress,
            folder=Path(model_path).parent, per_channel=per_channel, keep=result.feeds,
            keep_samples=focus.KEEP_SAMPLES, keep_bytes=focus.KEEP_BYTES)
        result.calibration = data.description
    return result


def _check_output(p: Plan, output_path: str | Path) -> Path:
    output_path = check_output_path(output_path, p.inputs)
    if p.files and any(data_path(output_path).resolve() == f.resolve() for f in p.files):
        raise OutputPathError(f"{output_path}: its weights file {data_path(output_path).name} would overwrite the "
                              "model's external data; choose another output name")
    return output_path


def write(p: Plan, output_path: str | Path, fits: dict[str, SiteFit], in_place: bool = False) -> ConversionReport:
    """Rewrite the plan's model with the given fits (one per converting site) and save it; the plan stays
    usable for other fits unless in_place (which saves a copy of the weights held in memory)."""
    output_path = _check_output(p, output_path)
    model = p.model
    if not in_place:
        model = onnx.ModelProto()
        model.CopyFrom(p.model)
    result = rewrite(model, p.sites, {name: f.params for name, f in fits.items()}, p.ranks, p.emit)
    save_model(model, output_path, p.model_path.parent)
    report = ConversionReport(str(p.model_path), str(output_path), site_reports(p.sites, fits, "converted"), p.emit)
    if p.calibration is not None:
        report.calibration = p.calibration
        report.calibration_samples = p.samples
    report.ir_version = result.ir_version
    report.near_misses = [(m.node, m.reason) for m in p.misses]
    report.notes += p.notes + rewrite_notes(result)
    inner = sum(1 for s in p.sites if s.graph and s.converts)
    if inner and p.calibration is not None:
        report.notes.append(f"{inner} sites inside subgraphs (If, Loop, Scan) use data-free ranges: calibration "
                            "does not reach into subgraphs yet")
    if default_opset(model) != p.opset_before:
        report.notes.insert(0, f"opset raised from {p.opset_before} to {default_opset(model)} (the gate function "
                               f"needs {FUNCTION_MIN_OPSET})")
    return report


def convert(
    model_path: str | Path,
    output_path: str | Path,
    *,
    k: int | str | None = None,
    calib: DataSource | None = None,
    emit: str = "function",
    only: set[str] | None = None,
    skip: set[str] | None = None,
    seed: int = 0,
    k_per_op: dict[str, int] | None = None,
    target_mse: float = DEFAULT_TARGET_MSE,
    images: ImageOptions | None = None,
    progress: bool | None = None,
    spike_penalty: float = 0.0,
    per_channel: bool = False,
    channel_axis: int | None = None,
    kicks: int = REFIT_KICKS,
    focus_kicks: int = focus.FOCUS_KICKS,
) -> ConversionReport:
    """Convert every activation of a model into an AMOS spiking gate and save the result.

    k: neurons per gate for every site, or "auto" (the smallest shipped K meeting target_mse on the
    site's samples); k_per_op overrides it per op type ("Composite" for every composite activation).
    calib: calibration data (see dataset.open_data: .npz/.npy path, image folder with `images` options,
    dict of arrays, iterable of input dicts or a CalibrationDataReader). progress: a progress line on
    stderr (None: when it is a terminal). spike_penalty: squared error one spike per gate may cost, as a
    fraction of the activation's mean square output on the site's samples, weighted per site by its share of
    the network's gate evaluations (fit.fit_sites; 0: error alone; on the Fashion-MNIST EfficientNet-style
    network at K=10, 0.005 takes the mean from 2.84 to 1.38 spikes per gate). per_channel: one gate per channel
    for every calibrated site whose channel count is static, channels with alike values sharing one
    (fit._channel_gates: the site's gate refined on their calibration values; needs calib); the channels lie
    on the last axis of a MatMul's, Gemm's or layer norm's output (through elementwise ops), else on axis 1
    (find.feature_axis), or on `channel_axis` for every site (negative: from the end). kicks: local-search
    moves of each calibrated refit (fit.REFIT_KICKS by default): more lower the fit's cost for more time.
    focus_kicks: with calib, the fits that move the model's outputs most are refitted with this many moves
    (fit_plan; 0: none).
    """
    check_options(k, emit, only, skip, k_per_op, target_mse)
    if not (spike_penalty >= 0 and spike_penalty < float("inf")):
        raise OptionError(f"--spike-penalty {spike_penalty}: must be zero or positive")
    if kicks < 0:
        raise OptionError(f"--kicks {kicks}: the number of local-search moves must be 0 or more")
    if focus_kicks < 0:
        raise OptionError(f"--focus-kicks {focus_kicks}: the number of local-search moves must be 0 or more")
    check_output_path(output_path, [model_path])
    p = plan(model_path, calib=calib, emit=emit, only=only, skip=skip, seed=seed, images=images, progress=progress,
             output=output_path, per_channel=per_channel, channel_axis=channel_axis)
    fits, focused = fit_plan(p, k, seed, k_per_op, target_mse, spike_penalty, per_channel, kicks, focus_kicks)
    report = write(p, output_path, fits, in_place=True)
    report.notes += focus_notes(focused, focus_kicks)
    if per_channel:
        report.notes += channel_notes(p.sites, channel_axis)
    return report


def fit_plan(
    p: Plan, k: int | str | None = None, seed: int = 0, k_per_op: dict[str, int] | None = None,
    target_mse: float = DEFAULT_TARGET_MSE, spike_penalty: float = 0.0, per_channel: bool = False,
    kicks: int = REFIT_KICKS, focus_kicks: int = focus.FOCUS_KICKS,
) -> tuple[dict[str, SiteFit], focus.Effects | None]:
    """The fit stage of a plan (fit.fit_sites), then, with calibration, the focus: each searched site's effect
    on the model's outputs measured on the kept calibration samples (focus.effects; over all its runs at most
    focus.FOCUS_PASSES times the calibration's samples), and the fits that make up most of it refitted with
    `focus_kicks` moves (0: no focus). The fits, and the effects that chose the focus (None when nothing was
    measured)."""
    fits = fit_sites(p.sites, p.reservoirs, k, seed, k_per_op, target_mse, spike_penalty, per_channel, kicks)
    if not focus_kicks or not p.feeds:
        return fits, None
    effect = focus.effects(p.model, p.sites, fits, p.ranks, p.emit, p.feeds, f"{p.model_path} (focus)",
                           p.model_path.parent, p.samples)
    chosen = frozenset(focus.chosen(effect, fits))
    if not chosen:
        return fits, None
    fits = fit_sites(p.sites, p.reservoirs, k, seed, k_per_op, target_mse, spike_penalty, per_channel, kicks,
                     Refocus(chosen, fits, focus_kicks))
    return fits, replace(effect, focused=chosen)


def focus_notes(effect: focus.Effects | None, kicks: int) -> list[str]:
    """What the focus did: which sites' fits got more moves and their share of the measured change."""
    if effect is None:
        return []
    chosen = effect.focused
    share = sum(effect.by_site[n] for n in chosen) / max(sum(effect.by_site.values()), 1e-300)
    return [f"focus: {len(chosen)} of {len(effect.by_site)} searched sites refitted with {kicks} moves, "
            f"{100 * share:.0f}% of the outputs' change measured on {effect.samples} calibration samples: "
            + ", ".join(sorted(chosen, key=lambda n: -effect.by_site[n])[:5]) + (", ..." if len(chosen) > 5 else "")]


def channel_notes(sites: list[Site], channel_axis: int | None) -> list[str]:
    """What --per-channel did: where the channels lie when some site's are on its last axis, and which sites
    keep one gate."""
    converting = [s for s in sites if s.converts and not s.graph]
    notes = []
    last = sum(1 for s in converting if s.channels and s.channel_axis != 1)
    if channel_axis is None and last:
        first = sum(1 for s in converting if s.channels and s.channel_axis == 1)
        notes.append(f"--per-channel: {last} sites have their channels on the last axis (after MatMul, Gemm or a "
                     f"layer norm), {first} on axis 1")
    shared = [s.name for s in converting if not s.channels]
    if shared:
        reason = "no static channel axis" if channel_axis is None else f"no static axis {channel_axis}"
        notes.append(f"--per-channel: {len(shared)} sites keep one gate ({reason}): "
                     + ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else ""))
    return notes
