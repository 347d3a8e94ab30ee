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

import onnx
from onnx import TensorProto

from amos_onnx import parallel
from amos_onnx.calibrate.run import exposed
from amos_onnx.data.dataset import Dataset, DataSource, is_ray_dataset, open_data, read_ahead, sample_count
from amos_onnx.data.images import ImageOptions
from amos_onnx.data.inputs import batch_axes, batch_size, batches, input_specs, model_layout, random_feeds
from amos_onnx.data.progress import Progress
from amos_onnx.errors import ModelLoadError
from amos_onnx.load import load_model
from amos_onnx.options import RayOptions
from amos_onnx.report.spikes import SpikeCounter, exposed_model
from amos_onnx.report.tally import OutputTally
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
    uncounted_gates: int = 0  # gate nodes inside Loop bodies, whose inputs cannot be brought out
    counter: SpikeCounter | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def gates_inside(self) -> int:
        """The gate nodes counted inside If branches and Scan bodies."""
        return sum(g.get("inside") is not None for g in self.gates)

    def lines(self) -> list[str]:
        ran = "native op" if self.native else "function form"
        lines = [f"inputs: {self.data}, {self.samples} samples; converted model ran the {ran}"]
        lines += [o.line() for o in self.outputs]
        if self.accuracy_original is not None:
            lines.append(f"accuracy: original {100 * self.accuracy_original:.2f}%, "
                         f"spiking {100 * (self.accuracy_converted or 0):.2f}%")
        if self.mean_spikes_per_gate is not None:
            inner = self.gates_inside
            lines.append(f"mean spikes per gate: {self.mean_spikes_per_gate:.3f} over {len(self.spikes_per_site)} "
                         "gate nodes" + (f" ({inner} inside If branches or Scan bodies)" if inner else ""))
        if self.uncounted_gates:
            lines.append(f"not counted: {self.uncounted_gates} gate nodes inside Loop bodies")
        return lines

    def to_dict(self) -> dict[str, object]:
        """Every figure, JSON-ready (the spike counter's raw samples left out)."""
        data = asdict(replace(self, counter=None))
        del data["counter"]
        data["passed"] = self.passed
        return data

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _verdict(tally: OutputTally, atol: float | None, rtol: float | None, min_agree: float | None) -> OutputVerdict:
    checks, passed, agreement = [], True, tally.agreement
    if agreement is not None:
        floor = DEFAULT_MIN_AGREEMENT if min_agree is None else min_agree
        passed &= agreement >= floor
        checks.append(f"top-1 agreement >= {floor:g}")
    if agreement is None or atol is not None or rtol is not None:
        a = DEFAULT_ATOL if atol is None else atol
        r = DEFAULT_RTOL if rtol is None else rtol
        bound = a + r * tally.original_max
        passed &= tally.error_max <= bound
        checks.append(f"max-abs-err <= atol {a:g} + rtol {r:g} * max|orig| = {bound:.4g}")
    return OutputVerdict(tally.name, bool(passed), tally.error_max, tally.mean_error, agreement, "; ".join(checks))


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
    ray: RayOptions | None = None  # measure the data in shards on Ray actors (amos_onnx.cluster)


def _dataset(model: onnx.ModelProto, data: DataSource | None, options: ValidateOptions) -> Dataset:
    if data is not None:
        return open_data(data, model, options.images, options.batch_axes)
    axes = batch_axes(model, options.batch_axes)
    feeds = random_feeds(model, options.seed, axes=axes)
    return Dataset(f"random inputs drawn from the input specs (seed {options.seed}); pass --data for real ones",
                   batches(feeds, batch_size(model, axes)), sample_count(feeds), axes=axes)


@dataclass
class Measured:
    """What a pass of both models over data measured, in sums, counts and maxima: the pass over all the data, or
    one shard's, merged with the others' (merge)."""

    outputs: list[OutputTally]
    counter: SpikeCounter
    samples: int
    native: bool

    def merge(self, other: Measured) -> None:
        for tally, theirs in zip(self.outputs, other.outputs):
            tally.merge(theirs)
        self.counter.merge(other.counter)
        self.samples += other.samples
        self.native = self.native and other.native


class Comparison:
    """Both models read and the tensors to compare chosen: the original's outputs, the gates' inputs (for their
    spikes) and the gates' outputs that the original has too (each layer's error). Sessions are made on first
    use, so a driver that hands the data to Ray actors never makes them."""

    def __init__(self, original: str | Path, converted: str | Path, options: ValidateOptions) -> None:
        self.original, self.converted, self.options = str(original), str(converted), options
        self.orig_model, self.conv_model = load_model(original), load_model(converted)
        self.names = [o.name for o in self.orig_model.graph.output]
        counter = self.counter()
        fed = {spec.name for spec in input_specs(self.orig_model)}
        in_original = {name for node in self.orig_model.graph.node for name in node.output}
        self.layer_names = [y for y in counter.outputs if y in in_original and y not in self.names]
        self.watched = [x for x in counter.inputs if x not in fed] + self.layer_names
        self.threads: int | None = None  # cores the runs may use (None: every core this process may use)
        self._sessions: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": None}  # sent to Ray actors, which make their own

    def counter(self, seed: int = 0) -> SpikeCounter:
        """An empty spike counter for the converted model's gates (`seed`: of its sample reservoirs)."""
        try:
            return SpikeCounter(self.conv_model, seed)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.converted}: {exc}") from None

    def sessions(self) -> tuple[Any, Any]:
        if self._sessions is None:
            probe = exposed(exposed_model(self.conv_model, self.counter().gates),
                            dict.fromkeys(self.watched, TensorProto.FLOAT))
            orig = exposed(self.orig_model, dict.fromkeys(self.layer_names, TensorProto.FLOAT))
            threads = parallel.RUN_THREADS  # the two models' runs side by side, _width() at once
            self._sessions = (
                user_session(orig, self.original, native=False, folder=Path(self.original).parent, threads=threads),
                user_session(probe, self.converted, native=self.options.native, folder=Path(self.converted).parent,
                             threads=threads))
        return self._sessions

    def _width(self) -> int:
        """How many runs go to onnxruntime at once: one per core (or per thread given), each on one thread."""
        return self.threads or parallel.cpus()

    def measure(self, dataset: Dataset, bar: Progress | None = None, seed: int = 0) -> Measured:
        """Both models over every batch of the dataset; `seed`: of the spike counter's sample reservoirs (a
        shard's own, so that merged samples stay uniform)."""
        orig_sess, conv_sess = self.sessions()
        conv_names = list(dict.fromkeys(self.names + self.watched))
        orig_names = self.names + self.layer_names
        measured = Measured([OutputTally(name) for name in self.names], self.counter(seed), 0, uses_native(conv_sess))
        runs = [(orig_sess, orig_names, self.original), (conv_sess, conv_names, self.converted)]
        with parallel.side_by_side(min(self._width(), len(runs))) as map_:  # one pool for every batch
            for batch in read_ahead(dataset.batches):  # the next batch is read while both models run on this one
                n = sample_count(batch)
                feed = model_layout(batch, dataset.axes)
                outputs = map_(lambda run: run_checked(run[0], run[1], feed, run[2]), runs)  # noqa: B023 (here)
                ref, got = dict(zip(orig_names, outputs[0])), dict(zip(conv_names, outputs[1]))
                labels = None if dataset.labels is None else dataset.labels[measured.samples:measured.samples + n]
                for i, tally in enumerate(measured.outputs):
                    tally.add(ref[tally.name], got[tally.name], labels if i == 0 else None)
                measured.counter.add({**feed, **got})
                measured.counter.compare(got, ref)
                measured.samples += n
                if bar is not None:
                    bar.advance(n)
        return measured


def validate(original: str | Path, converted: str | Path, data: DataSource | None = None,
             options: ValidateOptions | None = None, **keywords: Any) -> ValidationReport:
    """Compare a converted model with its original on data (or random inputs) and measure its spikes; options
    (ValidateOptions) or its fields as keywords. With options.ray, or a ray.data.Dataset as data, the data is
    measured in shards on Ray actors (amos_onnx.cluster) and the shards' figures merged."""
    options = options if options is not None else ValidateOptions(**keywords)
    comparison = Comparison(original, converted, options)
    if options.ray is not None or is_ray_dataset(data):
        from amos_onnx.cluster.validate import measure_on_ray

        description, measured = measure_on_ray(comparison, data, options)
    else:
        dataset = _dataset(comparison.orig_model, data, options)
        bar = Progress("validating", dataset.count, options.progress)
        measured = comparison.measure(dataset, bar)
        bar.close()
        description = dataset.description
    report = ValidationReport(comparison.original, comparison.converted, description, measured.samples,
                              measured.native)
    report.outputs = [_verdict(t, options.atol, options.rtol, options.min_agreement) for t in measured.outputs]
    accuracies = measured.outputs[0].accuracies if measured.outputs else None
    if accuracies is not None:
        report.accuracy_original, report.accuracy_converted = accuracies
    counter = measured.counter
    report.mean_spikes_per_gate = counter.mean_spikes()
    report.spikes_per_site = {name: st.mean_spikes for name, st in counter.stats.items()}
    report.gates = [st.to_dict(measured.samples) for st in counter.stats.values()]
    report.uncounted_gates = counter.uncounted
    report.counter = counter
    return report
