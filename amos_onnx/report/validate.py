"""Run the original and the converted model on the same inputs and compare them, output by output.

Default verdicts (a spiking model never matches exactly):
- a classifier output (2-D, at least 2 columns) PASSES when the top-1 class agrees
  on at least `min_agreement` of the samples (default 0.95);
- any other output PASSES when max |conv - orig| <= atol + rtol * max |orig|
  (defaults atol 1e-3, rtol 0.1); a given --atol/--rtol also applies to classifiers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from amos_onnx.calibrate.run import exposed
from amos_onnx.data.dataset import Dataset, DataSource, open_data, sample_count
from amos_onnx.data.images import ImageOptions
from amos_onnx.data.inputs import batch_axes, batch_size, batches, input_specs, model_layout, random_feeds
from amos_onnx.data.progress import Progress
from amos_onnx.errors import ModelLoadError
from amos_onnx.load import load_model
from amos_onnx.report.spikes import SpikeCounter
from amos_onnx.runtime import run_checked, user_session, uses_native

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 0.1
DEFAULT_MIN_AGREEMENT = 0.95


@dataclass(frozen=True)
class OutputVerdict:
    name: str
    passed: bool
    max_abs_error: float
    mean_abs_error: float
    agreement: float | None  # top-1 agreement for classifier outputs
    criterion: str

    def line(self) -> str:
        agree = f" top1-agreement={self.agreement:.4f}" if self.agreement is not None else ""
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"{verdict} {self.name}: max-abs-err={self.max_abs_error:.4g} mean-abs-err={self.mean_abs_error:.4g}"
                f"{agree} ({self.criterion})")


@dataclass
class ValidationReport:
    original: str
    converted: str
    data: str  # what the inputs were: a path, an image folder, or a note that they were random
    samples: int
    native: bool
    outputs: list[OutputVerdict] = field(default_factory=list)
    accuracy_original: float | None = None
    accuracy_converted: float | None = None
    mean_spikes_per_gate: float | None = None
    spikes_per_site: dict[str, float] = field(default_factory=dict)
    gates: list[dict[str, object]] = field(default_factory=list)  # per gate node: spikes, silent share, neurons
    counter: SpikeCounter | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def lines(self) -> list[str]:
        ran = "native op" if self.native else "function form"
        lines = [f"inputs: {self.data}, {self.samples} samples; converted model ran the {ran}"]
        lines += [o.line() for o in self.outputs]
        if self.accuracy_original is not None:
            lines.append(f"accuracy: original {100 * self.accuracy_original:.2f}%, "
                         f"spiking {100 * (self.accuracy_converted or 0):.2f}%")
        if self.mean_spikes_per_gate is not None:
            lines.append(f"mean spikes per gate: {self.mean_spikes_per_gate:.3f} over {len(self.spikes_per_site)} "
                         "gate nodes")
        return lines

    def to_dict(self) -> dict[str, object]:
        """Every figure, JSON-ready (the spike counter's raw samples left out)."""
        data = asdict(replace(self, counter=None))
        del data["counter"]
        data["passed"] = self.passed
        return data

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _verdict(name: str, ref: np.ndarray, out: np.ndarray, atol: float | None, rtol: float | None,
             min_agree: float | None) -> OutputVerdict:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = np.abs(out64 - ref64)
    max_err = float(diff.max()) if diff.size else 0.0
    mean_err = float(diff.mean()) if diff.size else 0.0
    checks, passed, agreement = [], True, None
    classifier = ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f"
    if classifier:
        agreement = float(np.mean(ref.argmax(1) == out.argmax(1))) if ref.shape[0] else 1.0
        floor = DEFAULT_MIN_AGREEMENT if min_agree is None else min_agree
        passed &= agreement >= floor
        checks.append(f"top-1 agreement >= {floor:g}")
    if not classifier or atol is not None or rtol is not None:
        a = DEFAULT_ATOL if atol is None else atol
        r = DEFAULT_RTOL if rtol is None else rtol
        bound = a + r * (float(np.abs(ref64).max()) if ref64.size else 0.0)
        passed &= max_err <= bound
        checks.append(f"max-abs-err <= atol {a:g} + rtol {r:g} * max|orig| = {bound:.4g}")
    return OutputVerdict(name, bool(passed), max_err, mean_err, agreement, "; ".join(checks))


@dataclass(frozen=True)
class ValidateOptions:
    """How validate() judges and runs: error bounds (None: the defaults above), the native op (None: when it is
    built), the seed of random inputs when no data is given, image preprocessing, the progress line."""

    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None
    native: bool | None = None
    seed: int = 0
    images: ImageOptions | None = None
    progress: bool | None = None
    batch_axes: Mapping[str, int] = field(default_factory=dict)  # CalibrationOptions.batch_axes, for --data


def _dataset(model: onnx.ModelProto, data: DataSource | None, options: ValidateOptions) -> Dataset:
    if data is not None:
        return open_data(data, model, options.images, options.batch_axes)
    axes = batch_axes(model, options.batch_axes)
    feeds = random_feeds(model, options.seed, axes=axes)
    return Dataset(f"random inputs drawn from the input specs (seed {options.seed}); pass --data for real ones",
                   batches(feeds, batch_size(model, axes)), sample_count(feeds), axes=axes)


def validate(original: str | Path, converted: str | Path, data: DataSource | None = None,
             options: ValidateOptions | None = None, **keywords: Any) -> ValidationReport:
    """Compare a converted model with its original on data (or random inputs) and measure its spikes; options
    (ValidateOptions) or its fields as keywords."""
    options = options if options is not None else ValidateOptions(**keywords)
    orig_model, conv_model = load_model(original), load_model(converted)
    dataset = _dataset(orig_model, data, options)
    fed = {spec.name for spec in input_specs(orig_model)}
    names = [o.name for o in orig_model.graph.output]
    try:
        counter = SpikeCounter(conv_model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{converted}: {exc}") from None
    # Gate inputs (for spikes) and outputs (for the per-layer error against the original's same tensor).
    in_original = {name for node in orig_model.graph.node for name in node.output}
    layer_names = [y for y in counter.outputs if y in in_original and y not in names]
    watched = [x for x in counter.inputs if x not in fed] + layer_names
    probe = exposed(conv_model, dict.fromkeys(watched, TensorProto.FLOAT))
    orig_sess = user_session(exposed(orig_model, dict.fromkeys(layer_names, TensorProto.FLOAT)), str(original),
                             native=False, folder=Path(original).parent)
    conv_sess = user_session(probe, str(converted), native=options.native, folder=Path(converted).parent)
    conv_names = list(dict.fromkeys(names + watched))
    orig_names = names + layer_names
    refs: list[list[np.ndarray]] = [[] for _ in names]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    bar = Progress("validating", dataset.count, options.progress)
    for batch in dataset.batches:
        feed = model_layout(batch, dataset.axes)
        ref = dict(zip(orig_names, run_checked(orig_sess, orig_names, feed, str(original))))
        got = dict(zip(conv_names, run_checked(conv_sess, conv_names, feed, str(converted))))
        for i, name in enumerate(names):
            refs[i].append(ref[name])
            outs[i].append(got[name])
        counter.add({**feed, **got})
        counter.compare(got, ref)
        bar.advance(sample_count(batch))
    bar.close()
    report = ValidationReport(str(original), str(converted), dataset.description, bar.done, uses_native(conv_sess))
    _judge(report, names, (refs, outs), dataset.labels, options)
    report.mean_spikes_per_gate = counter.mean_spikes()
    report.spikes_per_site = {name: st.mean_spikes for name, st in counter.stats.items()}
    report.gates = [st.to_dict(bar.done) for st in counter.stats.values()]
    report.counter = counter
    return report


def _judge(report: ValidationReport, names: list[str], runs: tuple[list[list[np.ndarray]], list[list[np.ndarray]]],
           labels: np.ndarray | None, options: ValidateOptions) -> None:
    """One verdict per output from the original's (refs) and the converted model's batches; the accuracies of
    the first output when the data has labels and it is a classifier's [N, classes]."""
    refs, outs = runs
    for i, name in enumerate(names):
        ref_all = np.concatenate([np.atleast_1d(r) for r in refs[i]])
        out_all = np.concatenate([np.atleast_1d(o) for o in outs[i]])
        report.outputs.append(_verdict(name, ref_all, out_all, options.atol, options.rtol, options.min_agreement))
        if labels is not None and i == 0 and ref_all.ndim == 2:
            report.accuracy_original = float(np.mean(ref_all.argmax(1) == labels))
            report.accuracy_converted = float(np.mean(out_all.argmax(1) == labels))
