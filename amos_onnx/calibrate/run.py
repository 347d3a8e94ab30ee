"""Run the original model on calibration data and keep a bounded sample of what each site sees."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from amos_onnx import parallel
from amos_onnx.calibrate.branches import expose_branches, merged_steps, stacked_axes
from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.data.dataset import Dataset, read_ahead, sample_count
from amos_onnx.data.inputs import BatchAxes, batch_size, model_layout, rows, sliceable, whole_batches
from amos_onnx.data.progress import Progress
from amos_onnx.data.shards import Sharded
from amos_onnx.find.sites import Site
from amos_onnx.options import CalibrationOptions
from amos_onnx.runtime import run_checked, user_session


def exposed(model: onnx.ModelProto, tensors: dict[str, int]) -> onnx.ModelProto:
    """A copy of the model that also outputs each named intermediate tensor (name: ONNX element type)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output} | {i.name for i in copy.graph.input}
    for name, dtype in tensors.items():
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, dtype, None))
    return copy


@dataclass
class Kept:
    """The first calibration batches, kept for measuring the converted sites' effect (fit.focus.effects): until
    they hold `samples` samples or `bytes` bytes (at least one batch)."""

    samples: int
    bytes: int
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    held: tuple[int, int] = (0, 0)  # samples and bytes of the feeds kept so far

    def offer(self, feed: dict[str, np.ndarray]) -> None:
        """Keep this feed while the kept ones hold fewer than `samples` samples and `bytes` bytes."""
        if self.held[0] < self.samples and self.held[1] < self.bytes:
            self.feeds.append(feed)
            self.held = (self.held[0] + sample_count(feed), self.held[1] + sum(a.nbytes for a in feed.values()))


BLOCK_SAMPLES = 8192  # the sampling's random draws restart every this many samples (whole batches): see Blocks


def block_rng(seed: int, file: int, block: int) -> np.random.Generator:
    """The random draws of one block of calibration samples (block `block` of the `file`-th data file); the first
    block draws as one unbroken stream of the seed did."""
    return np.random.default_rng(seed if (file, block) == (0, 0) else [seed, file, block])


@dataclass
class Blocks:
    """Reservoirs sampled block by block, each block of BLOCK_SAMPLES samples with its own draws (block_rng), then
    merged (Reservoir.merge keeps the smallest keys of all): the same sample however the blocks are split
    between processes and whatever order they come back in (Ray actors take whole blocks), since a sample merged
    from several blocks is put in the order of its keys."""

    reservoirs: dict[str, Reservoir] | None = None
    count: int = 0  # blocks merged

    def add(self, reservoirs: dict[str, Reservoir], blocks: int = 1) -> None:
        """Take in the reservoirs of `blocks` more blocks."""
        if self.reservoirs is None:
            self.reservoirs = reservoirs
        else:
            for name, reservoir in reservoirs.items():
                self.reservoirs[name].merge(reservoir)
        self.count += blocks

    def merge(self, other: Blocks) -> None:
        """Take in the blocks another process sampled."""
        if other.reservoirs is not None:
            self.add(other.reservoirs, other.count)


class Sampler:
    """What calibration samples of a model: the input tensor of every converting site (inside If branches too:
    calibrate.branches), exposed as outputs of a probe copy of the model; its session is made on first use (a
    Ray driver that hands the data to actors never makes it)."""

    def __init__(self, model: onnx.ModelProto, sites: list[Site], options: CalibrationOptions, label: str,
                 folder: str | Path | None) -> None:
        self.options, self.label, self.folder = options, label, folder
        types = {s.input: s.dtype for s in sites if s.converts and not s.graph}
        self.probe = exposed(model, types)
        self.inner = expose_branches(self.probe, sites)  # in If branches and Scan bodies; Loop bodies stay unsampled
        self.tensors = sorted(types) + sorted(self.inner)
        # the axes Scans on a site's way up stack its samples along, merged into its first axis when sampled, so that
        # its channels stay on the site's own channel axis
        self.stacked = {name: depth for name, key in self.inner.items() if (depth := stacked_axes(
            model.graph, next(s for s in sites if s.samples == key)))}
        self.channel_axes = {s.samples: s.channel_axis for s in sites
                             if options.per_channel and s.converts and s.channels}
        self.threads: int | None = None  # cores the runs may use (None: every core this process may use)
        self._sess: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sess": None}  # sent to Ray actors, which make their own

    def settled(self, blocks: Blocks) -> dict[str, Reservoir]:
        """The blocks' merged reservoirs, ordered by key when merged from several (empty ones of the first block's
        draws when no block was sampled)."""
        if blocks.reservoirs is None:
            return self.reservoirs(block_rng(self.options.seed, 0, 0))
        if blocks.count > 1:
            for reservoir in blocks.reservoirs.values():
                reservoir.order_by_key()
        return blocks.reservoirs

    def reservoirs(self, rng: np.random.Generator) -> dict[str, Reservoir]:
        """Empty reservoirs, one per sampled tensor, by Site.samples, drawing from rng."""
        keys = [self.inner.get(name, name) for name in self.tensors]
        return {key: Reservoir(self.options.cap, rng, self.channel_axes.get(key)) for key in keys}

    def sample(self, data: Dataset, blocks: Blocks, bar: Progress | None = None, keep: Kept | None = None,
               start: int = 0, file: int = 0) -> int:
        """Every batch of data, whose first sample is sample `start` of the `file`-th data file, into the blocks'
        reservoirs, block by block; the number of samples read. The runs go to onnxruntime side by side, one
        per core, each on one thread (Ahead): a single run of a convolutional network keeps a second core
        about half busy. The reservoirs take the outputs in the data's order, so they draw as one run at a
        time did."""
        width = self.threads or parallel.cpus()
        if self._sess is None:
            self._sess = user_session(self.probe, self.label, native=False, folder=self.folder,
                                      threads=parallel.RUN_THREADS)
        block_size = whole_batches(BLOCK_SAMPLES, batch_size(self.probe, data.axes))
        ahead = Ahead(width, blocks, bar, keep)
        block, runs, reservoirs, submitted = -1, _Runs(False, 0), {}, 0
        with ahead:
            for batch in read_ahead(data.batches):  # the next batch is read while this one runs
                if (start + submitted) // block_size != block:
                    block = (start + submitted) // block_size
                    reservoirs = self.reservoirs(block_rng(self.options.seed, file, block))
                    runs = _Runs(sliceable(self.probe, data.axes), self.options.run_bytes)
                for feed in runs.split(batch):  # batch-first; onnxruntime and the reservoirs see the model's layout
                    ahead.submit(self._job(feed, data.axes), feed, reservoirs, runs)
                    submitted += sample_count(feed)
                    if runs.sliceable and runs.per_row is None:  # the next run's rows follow from this one's outputs
                        ahead.drain()
        return ahead.done

    def _job(self, feed: dict[str, np.ndarray], axes: BatchAxes) -> Callable[[], _Outputs]:
        """One run of the probe on a batch-first feed: its exposed tensors (and the sampled inputs), by
        reservoir key."""
        laid_out = model_layout(feed, axes)
        outputs = [name for name in self.tensors if name not in feed]

        def run() -> _Outputs:
            values = run_checked(self._sess, outputs, laid_out, self.label) if outputs else []
            sampled = [(self.inner.get(name, name), merged_steps(value, self.stacked.get(name, 0)))
                       for name, value in zip(outputs, values)]
            return values, sampled + [(name, laid_out[name]) for name in self.tensors if name in feed]

        return run


def calibrate(
    model: onnx.ModelProto, sites: list[Site], data: Dataset | Sharded, options: CalibrationOptions | None = None,
    *, label: str = "model", progress: bool | None = None, folder: str | Path | None = None, keep: Kept | None = None,
) -> tuple[dict[str, Reservoir], int]:
    """Sample the input tensor of every converting site over all of `data`, batch by batch (Sampler): the
    reservoirs, by Site.samples, and the number of samples seen. Memory stays at one batch plus twice options.cap
    values per site (the block's sample and the merged one). With options.per_channel, the reservoir of a tensor
    with a static channel axis (Site.channel_axis, Site.channels) keeps each value's channel too. `keep`: the
    first batches are kept there (Kept). Sharded data is sampled in shards on Ray actors (amos_onnx.cluster),
    their reservoirs merged; the reservoirs are the same either way (Blocks)."""
    options = options or CalibrationOptions()
    sampler = Sampler(model, sites, options, label, folder)
    if not sampler.tensors:  # nothing to sample: the data is not read
        return {}, data.count or 0
    if isinstance(data, Sharded):
        from amos_onnx.cluster.calibrate import sample_on_ray

        return sample_on_ray(sampler, data, progress, keep)
    blocks = Blocks()
    bar = Progress("calibrating", data.count, progress)
    sampler.sample(data, blocks, bar, keep)
    bar.close()
    return sampler.settled(blocks), bar.done


class _Runs:
    """How many rows of a batch one calibration run takes, for models whose inputs' first dimension is free: one
    row first, then as many as keep the exposed outputs of a run within `run_bytes` (a site's input can be a
    hundred times the model's: a large run spends its time in memory, not in onnxruntime's kernels)."""

    def __init__(self, sliceable: bool, run_bytes: int) -> None:
        self.sliceable, self.run_bytes = sliceable, run_bytes
        self.per_row: float | None = None  # bytes of exposed outputs per row, once measured

    def split(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        n = sample_count(batch)
        if not self.sliceable or n <= 1:
            yield batch
            return
        start = 0
        while start < n:
            step = 1 if self.per_row is None else max(1, int(self.run_bytes // max(self.per_row, 1.0)))
            yield rows(batch, start, min(n, start + step))
            start += step

    def measure(self, feed: dict[str, np.ndarray], values: list[np.ndarray]) -> None:
        if self.per_row is None and self.sliceable:
            self.per_row = sum(np.asarray(v).nbytes for v in values) / max(sample_count(feed), 1)


_Outputs = tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]  # a run's outputs; every sampled tensor by key


class Ahead:
    """Runs that go ahead of the reservoirs: at most `width` of them on worker threads (onnxruntime lets go
    of the GIL while it runs), their outputs taken in the order they were submitted, each into its block's
    reservoirs (a finished block into `blocks`), with the progress bar and the kept batches."""

    def __init__(self, width: int, blocks: Blocks, bar: Progress | None, keep: Kept | None) -> None:
        self.width, self.blocks, self.bar, self.keep = width, blocks, bar, keep
        self.pool = ThreadPoolExecutor(width) if width > 1 else None
        self.pending: deque[tuple[Future[_Outputs] | Callable[[], _Outputs], dict[str, np.ndarray],
                                  dict[str, Reservoir], _Runs]] = deque()
        self.current: dict[str, Reservoir] | None = None  # the block whose reservoirs take outputs now
        self.done = 0

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self.drain()
                if self.current is not None:
                    self.blocks.add(self.current)
        finally:
            for job, *_rest in self.pending:
                if isinstance(job, Future):
                    job.cancel()
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    def submit(self, job: Callable[[], _Outputs], feed: dict[str, np.ndarray], reservoirs: dict[str, Reservoir],
               runs: _Runs) -> None:
        self.pending.append((self.pool.submit(job) if self.pool is not None else job, feed, reservoirs, runs))
        while len(self.pending) > self.width:
            self._take()

    def drain(self) -> None:
        while self.pending:
            self._take()

    def _take(self) -> None:
        job, feed, reservoirs, runs = self.pending.popleft()
        values, sampled = job.result() if isinstance(job, Future) else job()
        if reservoirs is not self.current:
            if self.current is not None:
                self.blocks.add(self.current)
            self.current = reservoirs
        runs.measure(feed, values)
        for key, value in sampled:
            reservoirs[key].add(value)
        if self.keep is not None:
            self.keep.offer(feed)
        self.done += sample_count(feed)
        if self.bar is not None:
            self.bar.advance(sample_count(feed))
