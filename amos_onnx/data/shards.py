"""Data sources cut into shards that workers read on their own (amos_onnx.cluster): the driver plans the shards
from file headers and folder listings and never reads the data.

- an .npz: row ranges; a worker reads its rows of each array as a stream, one batch at a time (an uncompressed
  member is read in place, a compressed one decompressed up to its rows);
- an .npy: row ranges of the memory-mapped array;
- a folder of images: ranges of its sorted files;
- a list of such paths: the shards of each, in turn.

Shards hold whole batches of the single-process path (their sizes are multiples of the batch size), so a
worker's batches are the same batches.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx

from amos_onnx.data.dataset import Dataset, sample_count
from amos_onnx.data.images import ImageOptions, describe, image_batches, image_files, plan
from amos_onnx.data.inputs import (
    LABELS,
    BatchAxes,
    Declared,
    batch_axes,
    batch_size,
    check_feeds,
    input_specs,
    model_layout,
    npz_headers,
    whole_batches,
)
from amos_onnx.errors import DataError

SHARDS_PER_WORKER = 4  # default shards per worker: a retried or slow shard holds back a quarter of a worker's share


@dataclass(frozen=True)
class Shard:
    """Samples start..stop-1 of one file (.npz/.npy rows) or of one folder's sorted image files."""

    index: int
    path: str
    start: int
    stop: int
    folder: bool = False
    file: int = 0  # the path's place in the list of paths

    @property
    def where(self) -> str:
        unit = "images" if self.folder else "rows"
        return f"{self.path} {unit} {self.start}..{self.stop - 1}"


@dataclass(frozen=True)
class Sharded:
    """A data source planned as shards, with what a worker needs to read them as the single-process path does."""

    description: str
    shards: tuple[Shard, ...]
    count: int | None  # None: not known before reading (a ray.data.Dataset)
    paths: tuple[Path, ...]  # files read (never to be overwritten)
    axes: BatchAxes
    images: ImageOptions | None
    size: int  # rows per batch
    source: Any = None  # a ray.data.Dataset read by the workers in batches instead of shards (no shards then)


def plan_shards(source: str | Path | Sequence[str | Path], model: onnx.ModelProto, images: ImageOptions | None,
                given_axes: BatchAxes | None, workers: int, shard_samples: int | None = None,
                unit: int = 1) -> Sharded:
    """The shards of a path or a list of paths for this model, checked from headers and listings (shapes, dtypes,
    sample counts); `shard_samples` per shard, else about SHARDS_PER_WORKER per worker, in whole units of
    `unit` samples rounded up to whole batches (calibration's blocks: calibrate.run.BLOCK_SAMPLES)."""
    paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
    if not paths or not all(isinstance(p, Path) for p in paths):
        raise DataError("sharded data must be a path or a list of paths (.npz, .npy, image folders)")
    axes = batch_axes(model, given_axes)
    size = batch_size(model, axes)
    counts = [_count(path, model, images, axes) for path in paths]
    what = _describe(paths[0], counts[0], model, images) if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    total = sum(counts)
    per = shard_samples or math.ceil(total / (SHARDS_PER_WORKER * max(workers, 1)))
    step = whole_batches(unit, size)
    per = max(step, math.ceil(per / step) * step)
    shards: list[Shard] = []
    read: list[Path] = []
    for file, (path, count) in enumerate(zip(paths, counts)):
        for start in range(0, count, per):
            shards.append(Shard(len(shards), str(path), start, min(count, start + per), path.is_dir(), file))
        read += image_files(path) if path.is_dir() else [path]
    return Sharded(f"{what} in {len(shards)} shards", tuple(shards), total, tuple(read), axes, images, size)


def _describe(path: Path, count: int, model: onnx.ModelProto, images: ImageOptions | None) -> str:
    """A path as the single-process path describes it (a folder: its images and the inputs they become)."""
    if not path.is_dir():
        return str(path)
    options = images or ImageOptions()
    return describe(path, count, plan(input_specs(model)[0], options, str(path)), options)


def _count(path: Path, model: onnx.ModelProto, images: ImageOptions | None, axes: BatchAxes) -> int:
    """The samples a path holds, its arrays' headers checked against the model (nothing else is read)."""
    if path.is_dir():
        if len(input_specs(model)) != 1:
            raise DataError(f"{path}: a folder of images feeds a one-input model")
        plan(input_specs(model)[0], images or ImageOptions(), str(path))
        return len(image_files(path))
    if images is not None:
        raise DataError(f"{path}: image options need a folder of images")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.suffix.lower() == ".npy":
        declared = {input_specs(model)[0].name: _npy_header(path)} if len(input_specs(model)) == 1 else {}
        if not declared:
            raise DataError(f"{path}: an .npy holds one array; the model has {len(input_specs(model))} inputs")
    else:
        declared = npz_headers(path)
    labels = declared.pop(LABELS, None)
    feeds = check_feeds(declared, model, str(path), axes)
    n = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != n):
        raise DataError(f"{path}: '{LABELS}' must be a 1-D array of {n} labels, got shape {list(labels.shape)}")
    return n


def _npy_header(path: Path) -> Declared:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from None
    return Declared(tuple(array.shape), array.dtype)


def open_shard(shard: Shard, sharded: Sharded, model: onnx.ModelProto) -> Dataset:
    """A shard as a Dataset of checked batch-first batches (the single-process path's batches over its samples),
    with its labels."""
    path = Path(shard.path)
    if shard.folder:
        spec = input_specs(model)[0]
        image_plan = plan(spec, sharded.images or ImageOptions(), shard.path)
        files = image_files(path)[shard.start:shard.stop]
        return Dataset(shard.where, image_batches(files, spec.name, image_plan, sharded.images or ImageOptions(),
                                                  sharded.size), len(files), axes=sharded.axes)
    names = [spec.name for spec in input_specs(model)]
    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        axis = sharded.axes.get(names[0], 0)
        columns = {names[0]: _rows_of(np.moveaxis(array, axis, 0) if array.ndim else array, shard, sharded.size)}
        labels = None
    else:
        members = npz_headers(path)
        columns = {name: _npz_rows(path, name, members[name], sharded.axes.get(name, 0), shard, sharded.size)
                   for name in names}
        labels = _npz_member(path, LABELS)[shard.start:shard.stop] if LABELS in members else None
    return Dataset(shard.where, _batches(columns, shard, model, sharded.axes), shard.stop - shard.start, labels,
                   axes=sharded.axes)


def _batches(columns: dict[str, Iterator[np.ndarray]], shard: Shard, model: onnx.ModelProto,
             axes: BatchAxes) -> Iterator[dict[str, np.ndarray]]:
    """The columns' batches together, each checked as the single-process path checks its data (dtypes, shapes,
    NaN and Inf), naming the file and rows."""
    start = shard.start
    while True:
        try:
            arrays = {name: next(column) for name, column in columns.items()}
        except StopIteration:
            return
        n = sample_count(arrays)
        yield check_feeds(model_layout(arrays, axes), model, f"{shard.path} rows {start}..{start + n - 1}", axes)
        start += n


def _rows_of(array: np.ndarray, shard: Shard, size: int) -> Iterator[np.ndarray]:
    """Batches of rows of a batch-first array (a scalar: itself for every batch)."""
    for start in range(shard.start, shard.stop, size):
        yield np.ascontiguousarray(array[start:min(shard.stop, start + size)]) if array.ndim else np.asarray(array)


def _npz_member(path: Path, name: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[name]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _npz_rows(path: Path, name: str, declared: Declared, axis: int, shard: Shard,
              size: int) -> Iterator[np.ndarray]:
    """Batches of rows of an .npz member, read in order from the member's stream: only this shard's rows are
    held, a batch at a time. A member whose samples are not its first axis (or in Fortran order) is read
    whole."""
    if axis or not declared.ndim:
        whole = _npz_member(path, name)
        yield from _rows_of(np.moveaxis(whole, axis, 0) if whole.ndim else whole, shard, size)
        return
    row_bytes = declared.dtype.itemsize * math.prod(declared.shape[1:])
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, fortran, _ = read(member)
            if fortran and declared.ndim > 1:
                yield from _rows_of(_npz_member(path, name), shard, size)
                return
            member.seek(member.tell() + shard.start * row_bytes)
            for start in range(shard.start, shard.stop, size):
                rows = min(shard.stop, start + size) - start
                buffer = bytearray(rows * row_bytes)
                if cast(Any, member).readinto(buffer) != len(buffer):  # a zip member is a BufferedIOBase
                    raise DataError(f"{path}: array '{name}' ends before row {start + rows}")
                yield np.frombuffer(buffer, declared.dtype).reshape(rows, *declared.shape[1:])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
