"""Input data in the forms users have, as one thing the stages iterate: batches of checked feed dicts.

Accepted sources (calibration and validation alike):
- a path to an .npz with one array per model input (plus optional `labels`), or an .npy for a
  one-input model;
- a path to a folder of images, read with explicit ImageOptions (see images.py);
- a dict of arrays, one per model input;
- in Python, any iterable of input dicts, or an object with get_next() returning dicts and then
  None (onnxruntime's quantization CalibrationDataReader). Each dict holds one batch; it is
  checked when it arrives and read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from amos_onnx.data.images import ImageOptions, describe, image_batches, image_files, plan
from amos_onnx.data.inputs import BatchAxes, batch_axes, batch_size, batches, check_feeds, input_specs, load_npz
from amos_onnx.errors import DataError


class CalibrationDataReader(Protocol):
    """onnxruntime.quantization's reader protocol: get_next() returns an input dict, then None."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


DataSource = str | Path | Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]] | CalibrationDataReader


@dataclass
class Dataset:
    """Batches of model inputs, checked against the model. count is None until a one-shot stream is read."""

    description: str
    batches: Iterator[dict[str, np.ndarray]]
    count: int | None = None  # samples, when known up front
    labels: np.ndarray | None = None
    paths: tuple[Path, ...] = ()  # files read (never to be overwritten)
    axes: BatchAxes = field(default_factory=dict)  # batches are batch-first: model_layout(feed, axes) for sessions


def _iterable(source: Any) -> Iterator[Mapping[str, np.ndarray]]:
    if hasattr(source, "get_next"):
        return iter(source.get_next, None)
    return iter(source)


def _checked_stream(items: Iterator[Mapping[str, np.ndarray]], model: onnx.ModelProto,
                    where: str, axes: BatchAxes) -> Iterator[dict[str, np.ndarray]]:
    seen = 0
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DataError(f"{where}: item {index} is {type(item).__name__}, not a dict of input arrays")
        arrays = {name: np.asarray(value) for name, value in item.items()}
        seen += 1
        yield check_feeds(arrays, model, f"{where} item {index}", axes)
    if seen == 0:
        raise DataError(f"{where}: yielded no inputs")


def _npy(path: Path, model: onnx.ModelProto, axes: BatchAxes) -> dict[str, np.ndarray]:
    specs = input_specs(model)
    if len(specs) != 1:
        raise DataError(f"{path}: an .npy holds one array; the model has {len(specs)} inputs, use an .npz")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from None
    return check_feeds({specs[0].name: array}, model, str(path), axes)


def open_data(source: DataSource, model: onnx.ModelProto, images: ImageOptions | None = None,
              axes: BatchAxes | None = None) -> Dataset:
    """The source as a Dataset for this model, or a DataError naming what does not fit. `axes`: inputs whose
    samples lie on another axis than the first (--batch-axis), added to those the model's symbolic dims tell
    (inputs.batch_axes); the batches are batch-first."""
    axes = batch_axes(model, axes)
    size = batch_size(model, axes)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            return _folder(path, model, images or ImageOptions(), size)
        if images is not None:
            raise DataError(f"{path}: image options need a folder of images")
        if path.suffix.lower() == ".npy" and path.is_file():
            feeds, labels = _npy(path, model, axes), None
        else:
            feeds, labels = load_npz(path, model, axes)
        n = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        return Dataset(str(path), batches(feeds, size), n, labels, (path,), axes)
    if isinstance(source, Mapping):
        feeds = check_feeds({k: np.asarray(v) for k, v in source.items()}, model, "input arrays", axes)
        n = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        return Dataset(f"{n} samples from arrays", batches(feeds, size), n, axes=axes)
    if hasattr(source, "get_next") or isinstance(source, Iterable):
        kind = type(source).__name__
        return Dataset(f"batches from a {kind}", _checked_stream(_iterable(source), model, f"calibration {kind}",
                                                                 axes), axes=axes)
    raise DataError(f"data of type {type(source).__name__} is not supported: give an .npz/.npy path, a folder of "
                    "images, a dict of arrays or an iterable of input dicts")


def _folder(folder: Path, model: onnx.ModelProto, options: ImageOptions, size: int) -> Dataset:
    specs = input_specs(model)
    if len(specs) != 1:
        raise DataError(f"{folder}: a folder of images feeds a one-input model; this one has {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)})")
    image_plan = plan(specs[0], options, str(folder))
    files = image_files(folder)
    return Dataset(describe(folder, len(files), image_plan, options),
                   image_batches(files, specs[0].name, image_plan, options, size), len(files), paths=tuple(files))


def is_ray_dataset(source: object) -> bool:
    """Whether data is a ray.data.Dataset (told without importing Ray)."""
    return any(cls.__module__.startswith("ray.data") and cls.__name__ == "Dataset" for cls in type(source).__mro__)


def sample_count(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed dict (the leading dimension of its first input that has one; 1 for scalars alone)."""
    first = next((a for a in feed.values() if np.ndim(a)), None)
    return int(first.shape[0]) if first is not None else 1


Batch = dict[str, np.ndarray]
_END: Any = object()  # what next() gives once the batches run out


def read_ahead(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches, each next one read on a thread of its own while the caller works on the one before it
    (decoding and resizing images lets go of the GIL): one batch more in memory, the same batches in the
    same order, and the reader's error raised where that batch would have come."""
    source = iter(batches)
    with ThreadPoolExecutor(1) as reader:
        coming = reader.submit(next, source, _END)
        while (batch := coming.result()) is not _END:
            coming = reader.submit(next, source, _END)
            yield batch
