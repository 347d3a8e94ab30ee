"""convert() and inspect(): the stages in order (load, find, calibrate, fit, rewrite, save)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.calibrate.run import BLOCK_SAMPLES, Kept, calibrate
from amos_onnx.compensate import bias
from amos_onnx.compensate.bias import Compensation
from amos_onnx.compensate.reconstruct import Reconstruction, reconstruct
from amos_onnx.compensate.sequential import sequential, sequential_notes
from amos_onnx.data.dataset import Dataset, DataSource, is_ray_dataset, open_data
from amos_onnx.data.shards import Sharded
from amos_onnx.errors import OptionError, OutputPathError
from amos_onnx.find.composite import NearMiss
from amos_onnx.find.sites import Site, find_sites, quantized_ops
from amos_onnx.fit import focus
from amos_onnx.fit.budget import allocate_plan, check_measurable
from amos_onnx.fit.chains import chains_notes
from amos_onnx.fit.change import judged_tensors
from amos_onnx.fit.choose import Allocation
from amos_onnx.fit.search import GRID_FLOOR
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.fit.sites import Refocus, fit_sites
from amos_onnx.load import FUNCTION_MIN_OPSET, default_opset, load_model, raise_opset, read_model, with_shapes
from amos_onnx.options import (
    CalibrationOptions,
    CompensationKind,
    ConvertOptions,
    EmitForm,
    FindOptions,
    FitOptions,
    RayOptions,
)
from amos_onnx.report.conversion import ConversionReport, SiteStatus, rewrite_notes, site_reports
from amos_onnx.rewrite.graph import rewrite
from amos_onnx.rewrite.recurrent import Lowered, lower_recurrent
from amos_onnx.save import check_output_path, data_path, save_model
from amos_onnx.timing import Stages


def _lowered(model: onnx.ModelProto, options: FindOptions) -> tuple[Lowered, list[str]]:
    """The model with its recurrent ops written out as Scans of plain nodes where they can be (rewrite.recurrent),
    and the note saying so."""
    lowered = lower_recurrent(model, options)
    if not lowered.written:
        return lowered, []
    ops = ", ".join(f"{count} {op}" for op, count in sorted(lowered.written.items()))
    return lowered, [f"{ops} written out as Scans of their gates' activations, which convert with the sites inside "
                     "Scan bodies"]


def _find(model: onnx.ModelProto, options: FindOptions,
          left: Mapping[str, str] | None = None) -> tuple[list[Site], list[NearMiss], list[str]]:
    """The model's sites, near misses and notes on them; `left`: why each recurrent op left in it is (Lowered.left)."""
    graph = gs.import_onnx(with_shapes(model))
    sites, misses = find_sites(graph, default_opset(model), options, left)
    notes = []
    quantized = quantized_ops(graph)
    if quantized:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(quantized.items()))
        notes.append(f"quantized graph ({ops}) left alone: activations fused into quantized ops (a Relu folded into "
                     "QLinearConv's output range, say) cannot convert; convert the float model before quantizing")
    return sites, misses, notes


def inspect(model_path: str | Path, options: FindOptions | None = None, *, only: Collection[str] | None = None,
            skip: Collection[str] | None = None) -> ConversionReport:
    """The activation sites of a model and whether each would convert; writes nothing. `only` and `skip`: the
    FindOptions fields, when no options are given."""
    if options is None:
        options = FindOptions(None if only is None else frozenset(only), None if skip is None else frozenset(skip))
    lowered, lowering = _lowered(load_model(model_path, weights=False), options)
    sites, misses, notes = _find(lowered.model, options, lowered.left)
    report = ConversionReport(str(model_path), None, site_reports(sites, {}, SiteStatus.WOULD_CONVERT))
    report.near_misses = [(m.node, m.reason) for m in misses]
    report.notes += lowering + notes
    return report


@dataclass
class Plan:
    """A model read, its sites found and (with data) calibrated: everything a conversion needs but the fits,
    with the options it was made with. One plan can be written out with several sets of fits (K sweeps, say)
    without reading the data again."""

    model_path: Path
    model: onnx.ModelProto
    options: ConvertOptions
    sites: list[Site]
    misses: list[NearMiss]
    notes: list[str]
    files: list[Path]
    opset_before: int
    full_check: bool  # the model passes onnx.checker's full check (load.check_loosely): its output must too
    reservoirs: dict[str, Reservoir] = field(default_factory=dict)
    samples: int = 0
    calibration: str | None = None
    inputs: list[Path] = field(default_factory=list)  # every file read: never to be overwritten
    feeds: list[dict] = field(default_factory=list)  # the first calibration batches (focus.KEEP_SAMPLES) ...
    axes: dict[str, int] = field(default_factory=dict)  # ... batch-first: inputs.model_layout(feed, axes) to run
    stages: Stages = field(default_factory=Stages)  # seconds per stage of the last plan, fit and write
    allocation: Allocation | None = None  # K per site of the last fit with a latency or spike budget
    # the tensors the outputs' change is measured at (change.judged_tensors): the floating-point outputs, or what
    # integer outputs are computed from
    judged: list[tuple[str, int]] = field(default_factory=list)
    # the layer refits the last sequential walk made for the fits it returned (compensate.sequential), judged
    walked: tuple[dict[str, SiteFit], Reconstruction] | None = None


def _options(options: ConvertOptions | None, keywords: dict[str, Any]) -> ConvertOptions:
    if options is not None and keywords:
        raise TypeError(f"give options or keywords, not both ({', '.join(keywords)})")
    return options if options is not None else ConvertOptions.of(**keywords)


def plan(model_path: str | Path, calib: DataSource | None = None, options: ConvertOptions | None = None, *,
         output: str | Path | None = None, **keywords: Any) -> Plan:
    """Load, find and calibrate (the stages before fitting); `output`, when given, is checked before the
    calibration (it must not overwrite any file read). Keywords: ConvertOptions.of's, when no options are given.
    With options.calibration.per_channel, the calibration keeps each value's channel (along the site input's
    feature axis, find.sites.feature_axis, or FindOptions.channel_axis for every site, where its size is static)."""
    options = _options(options, keywords)
    if options.fit.per_channel and calib is None:
        raise OptionError("--per-channel needs --calib: each channel's gate is fitted on that channel's values")
    if options.fit.bias_correction and calib is None:
        raise OptionError("--bias-correction needs --calib: the mean shifts are measured on calibration samples")
    if options.fit.reconstruct and calib is None:
        raise OptionError("--reconstruct needs --calib: the layers are refitted on calibration samples")
    if options.fit.reconstruct and options.fit.bias_correction:
        raise OptionError("--reconstruct refits the biases too: give it or --bias-correction, not both")
    if options.fit.budgeted and calib is None:
        raise OptionError(f"{'--latency' if options.fit.latency is not None else '--spike-budget'} needs --calib: "
                          "K per site is chosen by the outputs' change measured on calibration samples")
    if options.fit.sequential and calib is None:
        raise OptionError("--sequential needs --calib: the gates are refitted on the inputs calibration samples give "
                          "them")
    if options.fit.range_weight != GRID_FLOOR and calib is None:
        raise OptionError("--range-weight needs --calib: it weighs each site's calibration samples against its range")
    stages = Stages()
    with stages.stage("load"):
        model, files, loose = read_model(model_path)
        data = _open(calib, model, options.calibration) if calib is not None else None
        opset_before = default_opset(model)
        if options.emit is EmitForm.FUNCTION:
            model = raise_opset(model, FUNCTION_MIN_OPSET)
    judged = judged_tensors(model)
    check_measurable(judged, model, Path(model_path), options.fit)  # before the calibration: a budget must measure
    with stages.stage("find"):
        lowered, lowering = _lowered(model, options.find)
        model = lowered.model
        sites, misses, find_notes = _find(model, options.find, lowered.left)
        find_notes = lowering + find_notes
    if loose is not None:
        find_notes.insert(0, f"the ONNX checker's full check refuses the model ({loose}); it passes the basic check "
                             "and onnxruntime loads it, so it is converted, and the output is checked the same way")
    result = Plan(Path(model_path), model, options, sites, misses, find_notes, files, opset_before, loose is None,
                  inputs=[Path(model_path), *files, *(data.paths if data else ())], stages=stages, judged=judged)
    if output is not None:
        _check_output(result, output)
    if data is not None:
        kept = Kept(focus.KEEP_SAMPLES, focus.KEEP_BYTES, result.feeds)
        with stages.stage("calibrate"):
            result.reservoirs, result.samples = calibrate(
                model, sites, data, options.calibration, label=f"{model_path} with {data.description}",
                progress=options.progress, folder=Path(model_path).parent, keep=kept)
        result.calibration = data.description
        result.axes = dict(data.axes)
    return result


def _open(calib: DataSource, model: onnx.ModelProto, options: CalibrationOptions) -> Dataset | Sharded:
    """The calibration data: read here, or planned as shards for Ray actors (with options.ray, or a
    ray.data.Dataset)."""
    if options.ray is not None or is_ray_dataset(calib):
        from amos_onnx.cluster.connect import plan_data

        return plan_data(calib, model, options.images, options.batch_axes, options.ray or RayOptions(),
                         BLOCK_SAMPLES)
    return open_data(calib, model, options.images, options.batch_axes)


def _check_output(p: Plan, output_path: str | Path) -> Path:
    output_path = check_output_path(output_path, p.inputs)
    if p.files and any(data_path(output_path).resolve() == f.resolve() for f in p.inputs):
        raise OutputPathError(f"{output_path}: its weights file {data_path(output_path).name} would overwrite an "
                              "input (the model, its external data or the calibration data); choose another output "
                              "name")
    return output_path


def write(p: Plan, output_path: str | Path, fits: dict[str, SiteFit], in_place: bool = False,
          compensation: Compensation | Reconstruction | None = None) -> ConversionReport:
    """Rewrite the plan's model with the given fits (one per converting site) and the biases or weights of
    `compensation` (compensate(p, fits)) and save it; the plan stays usable for other fits unless in_place (which
    saves a copy of the weights held in memory)."""
    return _write(p, _check_output(p, output_path), fits, in_place, compensation)


def compensate(p: Plan, fits: dict[str, SiteFit]) -> Compensation | Reconstruction:
    """The plan's layers after the gates compensated for these fits as its options say (FitOptions.compensation):
    their refits (compensate.reconstruct; those the sequential walk made, Plan.walked, when it returned these very
    fits) or their bias corrections (compensate.bias), timed as the "compensate" stage. Options that ask for neither
    are a caller's error, not a silent choice of one."""
    kind = p.options.fit.compensation(p.calibration is not None)
    if kind is None:
        raise ValueError("compensate: the plan's options ask for no compensation (reconstruct=False, no bias "
                         "correction, or no calibration data)")
    with p.stages.stage("compensate"):
        if kind is not CompensationKind.RECONSTRUCT:
            return bias.compensate(p, fits)
        if p.walked is not None and p.walked[0].keys() == fits.keys() and all(
                p.walked[0][name] is fit for name, fit in fits.items()):
            return p.walked[1]  # the sequential walk refitted the layers for these very fits
        return reconstruct(p, fits)


def _write(p: Plan, output_path: Path, fits: dict[str, SiteFit], in_place: bool,
           compensation: Compensation | Reconstruction | None = None) -> ConversionReport:
    model = p.model
    with p.stages.stage("rewrite"):
        if not in_place:
            model = onnx.ModelProto()
            model.CopyFrom(p.model)
        written = compensation.apply(model) if compensation is not None else []
        result = rewrite(model, p.sites, {name: f.params for name, f in fits.items()}, p.options.emit)
    with p.stages.stage("save"):
        save_model(model, output_path, p.model_path.parent, full_check=p.full_check)
    report = ConversionReport(str(p.model_path), str(output_path), site_reports(p.sites, fits, SiteStatus.CONVERTED),
                              p.options.emit, stage_seconds=dict(p.stages.seconds))
    if p.calibration is not None:
        report.calibration = p.calibration
        report.calibration_samples = p.samples
    report.ir_version = result.ir_version
    if compensation is not None:
        report.biases = compensation.rows(written)
        report.notes += compensation.notes()
    report.near_misses = [(m.node, m.reason) for m in p.misses]
    report.notes += p.notes + rewrite_notes(result)
    inner = sum(1 for s in p.sites if s.graph and s.converts and s.samples not in p.reservoirs)
    if inner and p.calibration is not None:
        report.notes.append(f"{inner} sites inside Loop bodies use data-free ranges: calibration reaches into If "
                            "branches and Scan bodies only")
    if default_opset(model) != p.opset_before:
        report.notes.insert(0, f"opset raised from {p.opset_before} to {default_opset(model)} (the gate function "
                               f"needs {FUNCTION_MIN_OPSET})")
    return report


def convert(model_path: str | Path, output_path: str | Path, calib: DataSource | None = None,
            options: ConvertOptions | None = None, *, uncorrected_output: str | Path | None = None,
            **keywords: Any) -> ConversionReport:
    """Convert every activation of a model into an AMOS spiking gate and save the result.

    calib: calibration data (see data.dataset.open_data: .npz/.npy path, image folder with `images` options,
    dict of arrays, iterable of input dicts or a CalibrationDataReader). options: what to find, how to calibrate
    and fit, the emission form (options.ConvertOptions; its fields say what each does), or the same as flat
    keywords (ConvertOptions.of: k=8, spike_penalty=0.005, per_channel=True, ...). uncorrected_output: with a
    compensation (weight reconstruction, on by default with calibration, or bias correction), the same conversion
    without it is written there too (for write_report's comparison).
    """
    options = _options(options, keywords)
    p = plan(model_path, calib, options, output=output_path)
    fits, focused = fit_plan(p)
    compensation = compensate(p, fits) if options.fit.compensation(p.calibration is not None) and p.feeds else None
    if compensation is not None and uncorrected_output is not None:
        write(p, uncorrected_output, fits)  # a copy: the same conversion without its corrections
    report = _write(p, Path(output_path), fits, in_place=True, compensation=compensation)
    report.notes += (focus_notes(focused, options.fit.focus_kicks) + sequential_notes(fits)
                     + chains_notes(options.fit.chains, [f.params for f in fits.values()]))
    if p.allocation is not None:
        report.budget = p.allocation.to_dict()
        report.notes += p.allocation.lines()
    if options.fit.per_channel:
        report.notes += channel_notes(p.sites, options.find.channel_axis)
    return report


def fit_plan(p: Plan, options: FitOptions | None = None) -> tuple[dict[str, SiteFit], focus.Effects | None]:
    """The fit stage of a plan (fit.sites.fit_sites, with the plan's fit options unless others are given), then,
    with calibration, the focus: each searched site's effect on the model's outputs measured on the kept
    calibration samples (focus.effects), and the fits that make up most of it refitted with options.focus_kicks
    moves (0: no focus). The fits, and the effects that chose the focus (None when nothing was measured)."""
    options = options or p.options.fit
    if options.per_channel and not p.options.calibration.per_channel:
        raise OptionError("per-channel fits need a plan whose calibration kept each value's channel "
                          "(plan(..., per_channel=True))")
    p.allocation = None
    for stage in ("fit", "budget"):  # the last fit's stage only: a budget's stage is its fits
        p.stages.seconds.pop(stage, None)
    if options.budgeted:
        with p.stages.stage("budget"):  # every site fitted at each candidate K, measured, and K chosen per site
            p.allocation, fits = allocate_plan(p, options)
        options = replace(options, latency=None, spike_budget=None, k_per_site=p.allocation.k)
    else:
        with p.stages.stage("fit"):
            fits = fit_sites(p.sites, p.reservoirs, options)
    p.stages.seconds.pop("focus", None)
    if not options.focus_kicks or not p.feeds:
        return _sequential(p, fits, options), None
    with p.stages.stage("focus"):
        effect = focus.effects(p, fits)
        chosen = frozenset(focus.chosen(effect, fits))
        if chosen:
            fits = fit_sites(p.sites, p.reservoirs, options, Refocus(chosen, fits, options.focus_kicks))
    return _sequential(p, fits, options), (replace(effect, focused=chosen) if chosen else None)


def _sequential(p: Plan, fits: dict[str, SiteFit], options: FitOptions) -> dict[str, SiteFit]:
    """With options.sequential and kept calibration samples, the fits refitted level by level
    (compensate.sequential), timed as the "sequential" stage."""
    p.stages.seconds.pop("sequential", None)
    if not options.sequential or not p.feeds:
        return fits
    with p.stages.stage("sequential"):
        return sequential(p, fits, options)[0]


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
