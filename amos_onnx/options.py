"""The option objects: one frozen dataclass per stage, checked once where it is built.

convert() takes a ConvertOptions (find, calibration, fit and the emission form); the command line builds the
same objects and takes its defaults and help from their fields (`help` in each field's metadata). A bad value
is an OptionError naming the command-line option it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

from amos_onnx.data.images import ImageOptions
from amos_onnx.errors import OptionError
from amos_onnx.find.gates import selectable_ops
from amos_onnx.fit.search import GRID_FLOOR
from amos_onnx.gate import MAX_K

AUTO: Literal["auto"] = "auto"
K = int | Literal["auto"] | None


class EmitForm(StrEnum):
    """How the converted node is written: a node calling a model-local function, or the gate's ops inline."""

    FUNCTION = "function"
    INLINE = "inline"


class CompensationKind(StrEnum):
    """What a calibrated conversion does to the linear layers after the gates (amos_onnx.compensate)."""

    BIAS = "bias correction"
    RECONSTRUCT = "weight reconstruction"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def op_set(option: str, value: str | Iterable[str] | None) -> frozenset[str] | None:
    """Op types as a set: a comma-separated string (as --only and --skip take them) or any collection of names."""
    if value is None:
        return None
    if not isinstance(value, str):
        return frozenset(value)
    ops = frozenset(v.strip() for v in value.split(",") if v.strip())
    if not ops:
        raise OptionError(f"{option}: give a comma-separated list of op types, e.g. Relu,Sigmoid")
    return ops


def _check_ops(option: str, ops: frozenset[str] | Mapping[str, int] | None) -> None:
    known = set(selectable_ops())
    unknown = sorted(set(ops or ()) - known)
    if unknown:
        raise OptionError(f"{option}: unknown activation op {', '.join(unknown)}",
                          hint=f"known: {', '.join(sorted(known))}")


def check_moves(option: str, value: int) -> None:
    """A number of local-search moves (--kicks and the like): 0 or more."""
    if value < 0:
        raise OptionError(f"{option} {value}: the number of local-search moves must be 0 or more")


def check_range_weight(value: float) -> None:
    """--range-weight: a share of the loss, between 0 and 1."""
    if not 0.0 <= value <= 1.0:
        raise OptionError(f"--range-weight {value}: must be between 0 and 1")


@dataclass(frozen=True)
class FindOptions:
    """Which activations convert, and where per-channel gates find each site's channels."""

    only: frozenset[str] | None = field(default=None, metadata=_help(
        "Convert only these op types (comma-separated; Composite for composite activations)."))
    skip: frozenset[str] | None = field(default=None, metadata=_help("Leave these op types analog (comma-separated)."))
    channel_axis: int | None = field(default=None, metadata=_help(
        "With --per-channel: this axis holds every site's channels (negative: from the end)."))

    def __post_init__(self) -> None:
        # the Python API's "Relu,Sigmoid" or ["Relu"] mean what --only Relu,Sigmoid and --only Relu do
        object.__setattr__(self, "only", op_set("--only", self.only))
        object.__setattr__(self, "skip", op_set("--skip", self.skip))
        _check_ops("--only", self.only)
        _check_ops("--skip", self.skip)


@dataclass(frozen=True)
class RayOptions:
    """Where and how data is measured in shards on Ray (the `ray` extra): the cluster and its actors."""

    address: str | None = field(default=None, metadata=_help(
        "Run on Ray: nothing for a local cluster on this machine, 'auto' for the running cluster this machine "
        "belongs to, or an address (host:port, ray://host:10001)."))
    actors: int | None = field(default=None, metadata=_help(
        "Ray actors, each holding its own onnxruntime sessions (default: the cluster's CPUs divided by "
        "--ray-cpus)."))
    cpus: int = field(default=1, metadata=_help(
        "CPUs per Ray actor: as many of its onnxruntime runs go side by side, one thread each."))
    shard_samples: int | None = None  # samples per shard (None: about 4 shards per actor, whole batches)

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise OptionError(f"--ray-actors {self.actors}: must be 1 or more")
        if self.cpus < 1:
            raise OptionError(f"--ray-cpus {self.cpus}: must be 1 or more")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise OptionError(f"shard_samples {self.shard_samples}: must be 1 or more")


@dataclass(frozen=True)
class CalibrationOptions:
    """How calibration samples each site's inputs: its random draw, and whether values keep their channel."""

    seed: int = field(default=0, metadata=_help("Seed of the calibration's reservoir sampling."))
    per_channel: bool = field(default=False, metadata=_help("Keep each value's channel (for per-channel gates)."))
    images: ImageOptions | None = None
    cap: int = 100_000  # values kept per site tensor, a uniform random sample of all it saw
    run_bytes: int = 128 << 20  # a calibration run takes as many rows as keep its exposed outputs below this
    batch_axes: Mapping[str, int] = field(default_factory=dict, metadata=_help(
        "NAME=AXIS: the axis of input NAME that holds its samples, where it is not the first (a recurrent state "
        "[layers, N, H]: state=1); repeat for several. Symbolic dims that name the batch tell it too."))
    ray: RayOptions | None = None  # calibrate in shards on Ray actors (amos_onnx.cluster)


REFIT_KICKS = 6  # local-search moves of a calibrated refit (the shipped gates had a longer search offline)
FOCUS_KICKS = 200  # local-search moves of a focused refit
DEFAULT_TARGET_MSE = 1e-4  # --k auto's per-site error target
MAX_CHAINS = 4  # --chains: circuits per gate


@dataclass(frozen=True)
class FitOptions:
    """How every site's gate is fitted."""

    k: K = field(default=None, metadata=_help(
        "Neurons per gate for every site, or 'auto' (the smallest K meeting --target-mse); default per activation."))
    k_per_op: Mapping[str, int] = field(default_factory=dict, metadata=_help(
        "K per op type, e.g. Relu=8,Sigmoid=12,Composite=16."))
    target_mse: float = field(default=DEFAULT_TARGET_MSE, metadata=_help(
        "Per-site error target of --k auto (MSE on the site's calibration samples)."))
    spike_penalty: float = field(default=0.0, metadata=_help(
        "Relative spike penalty: the squared error one spike per gate may cost, as a fraction of the activation's "
        "mean square output, spread over the sites by their share of the gate evaluations (0: error alone)."))
    seed: int = field(default=0, metadata=_help("Seed of the fitter's local search."))
    kicks: int = field(default=REFIT_KICKS, metadata=_help(
        "Local-search moves of each calibrated refit: more give lower error or fewer spikes for more fitting time."))
    focus_kicks: int = field(default=FOCUS_KICKS, metadata=_help(
        "With --calib: the fits that move the model's outputs most (measured on calibration samples, one site's "
        "gate at a time) are refitted with this many moves (0: no focus)."))
    range_weight: float = field(default=GRID_FLOOR, metadata=_help(
        "With --calib: the share of each fit's squared error taken evenly over the site's whole calibrated range, "
        "the rest on its calibration samples. 0 fits the samples alone: the most accurate gates where the inputs "
        "to come are like the calibration data; more keeps the gate accurate over the whole range, for inputs "
        "unlike them."))
    channel_kicks: int = field(default=0, metadata=_help(
        "With --per-channel: local-search moves of each channel group's refit of its site's gate (0: descent "
        "alone). More give lower error for more fitting time."))
    per_channel: bool = field(default=False, metadata=_help(
        "One gate per channel of each site; channels with alike calibration values share one refined gate "
        "(needs --calib). Channels: the last axis after MatMul, Gemm or a layer norm, else axis 1."))
    bias_correction: bool = field(default=False, metadata=_help(
        "With --calib: the mean shift the gates leave at each linear layer after them (Conv, Gemm, MatMul + Add) "
        "is measured on calibration samples, level by level with the sites before it spiking, and taken back "
        "through that layer's bias."))
    reconstruct: bool | None = field(default=None, metadata=_help(
        "With --calib (on by default there, unless --bias-correction replaces it): the weights and bias of each Conv, "
        "Gemm and MatMul + Add after the gates are refitted, level by level, by ridge regression on the inputs they "
        "get with the sites before them spiking, against what the original layer computes; kept where held-out "
        "samples' error drops. --no-reconstruct keeps every weight as trained."))
    sequential: bool = field(default=False, metadata=_help(
        "With --calib: every gate is refitted, level by level, on the inputs it gets with the sites before it "
        "spiking, against what the original network computes there (the gates in the top-level graph; per-channel "
        "ones one per gate their channels share)."))
    latency: int | None = field(default=None, metadata=_help(
        "With --calib: K per site chosen so that the time steps along the deepest path of gates are at most this "
        "many, minimising the outputs' change measured on calibration samples (instead of --k); the uniform K within "
        "the budget is kept unless the choice moves the outputs significantly less there."))
    spike_budget: float | None = field(default=None, metadata=_help(
        "With --calib: K per site chosen so that the mean spikes per gate are at most this many, minimising the "
        "outputs' change measured on calibration samples (with or instead of --latency)."))
    chains: int = field(default=1, metadata=_help(
        "Circuits of K neurons side by side in each gate, each fitted to the activation over one piece of its "
        "range, their outputs added: the same K time steps (the latency stays K) with chains x K neurons, and a "
        "gate about as accurate as one chain of chains x K neurons. Per-channel gates keep one chain."))
    k_per_site: Mapping[str, int] = field(default_factory=dict)  # K by site name (a budget's choice), before all

    def __post_init__(self) -> None:
        if isinstance(self.k, str) and self.k != AUTO:
            raise OptionError(f"--k {self.k}: give a number of neurons or 'auto'")
        if isinstance(self.k, int) and not 1 <= self.k <= MAX_K:
            raise OptionError(f"--k {self.k}: K must be between 1 and {MAX_K}")
        for op, value in self.k_per_op.items():
            if not 1 <= value <= MAX_K:
                raise OptionError(f"--k-per-op {op}={value}: K must be between 1 and {MAX_K}")
        _check_ops("--k-per-op", self.k_per_op)
        if not 1 <= self.chains <= MAX_CHAINS:
            raise OptionError(f"--chains {self.chains}: must be between 1 and {MAX_CHAINS}")
        if not self.target_mse > 0:
            raise OptionError(f"--target-mse {self.target_mse}: must be positive")
        if not (self.spike_penalty >= 0 and math.isfinite(self.spike_penalty)):
            raise OptionError(f"--spike-penalty {self.spike_penalty}: must be zero or positive")
        check_range_weight(self.range_weight)
        check_moves("--kicks", self.kicks)
        check_moves("--focus-kicks", self.focus_kicks)
        check_moves("--channel-kicks", self.channel_kicks)
        if self.channel_kicks and not self.per_channel:
            raise OptionError("--channel-kicks needs --per-channel: it searches each channel group's gate")
        if self.latency is not None and self.latency < 1:
            raise OptionError(f"--latency {self.latency}: must be at least 1 time step")
        if self.spike_budget is not None and not (self.spike_budget > 0 and math.isfinite(self.spike_budget)):
            raise OptionError(f"--spike-budget {self.spike_budget}: must be a positive number of spikes per gate")
        if self.budgeted and (self.k is not None or self.k_per_op):
            budget = "--latency" if self.latency is not None else "--spike-budget"
            raise OptionError(f"{budget} chooses K per site: give it or --k / --k-per-op, not both")
        for site, value in self.k_per_site.items():
            if not 1 <= value <= MAX_K:
                raise OptionError(f"K={value} for site {site}: K must be between 1 and {MAX_K}")

    def compensation(self, calibrated: bool) -> CompensationKind | None:
        """How the layers after the gates are compensated in a conversion with or without calibration data: bias
        correction when asked for, else weight reconstruction when asked for or left to its default (on with
        calibration), else not at all."""
        if self.bias_correction:
            return CompensationKind.BIAS
        if self.reconstruct or (self.reconstruct is None and calibrated):
            return CompensationKind.RECONSTRUCT
        return None

    @property
    def budgeted(self) -> bool:
        """Whether K per site is chosen for a latency or spike budget."""
        return self.latency is not None or self.spike_budget is not None


@dataclass(frozen=True)
class ConvertOptions:
    """Everything convert() does besides its files: find, calibration, fit, the emission form, progress."""

    find: FindOptions = field(default_factory=FindOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    fit: FitOptions = field(default_factory=FitOptions)
    emit: EmitForm = field(default=EmitForm.FUNCTION, metadata=_help(
        "function (a local function per K) or inline."))
    progress: bool | None = None  # a progress line on stderr; None: when it is a terminal

    def __post_init__(self) -> None:
        if self.emit not in tuple(EmitForm):
            raise OptionError(f"--emit {self.emit}: must be one of {', '.join(EmitForm)}")
        object.__setattr__(self, "emit", EmitForm(self.emit))
        if self.find.channel_axis is not None and not self.fit.per_channel:
            raise OptionError(f"--channel-axis {self.find.channel_axis}: only with --per-channel")
        if self.fit.per_channel and not self.calibration.per_channel:
            raise OptionError("per-channel fits need a calibration that keeps each value's channel")

    @classmethod
    def of(cls, **keywords: Any) -> ConvertOptions:
        """Options from flat keywords: any field of FindOptions, CalibrationOptions or FitOptions, and emit,
        progress; `seed` and `per_channel` set both the calibration's and the fit's."""
        parts: dict[str, dict[str, Any]] = {"find": {}, "calibration": {}, "fit": {}}
        top: dict[str, Any] = {}
        for name, value in keywords.items():
            owners = [part for part, kind in _PARTS.items() if name in _names(kind)]
            if name in ("emit", "progress"):
                top[name] = value
            elif not owners:
                raise TypeError(f"unknown conversion option {name!r}")
            for part in owners:
                parts[part][name] = value
        return cls(FindOptions(**parts["find"]), CalibrationOptions(**parts["calibration"]), FitOptions(**parts["fit"]),
                   **top)


_PARTS: dict[str, type] = {"find": FindOptions, "calibration": CalibrationOptions, "fit": FitOptions}


def _names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}
