"""Model input specs, input data from .npz files checked against them, and batching."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import helper

from amos_onnx.errors import DataError

LABELS = "labels"  # reserved npz key: class labels for accuracy
DEFAULT_BATCH = 64
MAX_RANDOM_ELEMENTS = 1 << 26  # random inputs beyond this per input need --data instead


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: unknown rank


BatchAxes = Mapping[str, int]  # input name -> the axis that holds its samples, where it is not the first


def input_specs(model: onnx.ModelProto, axes: BatchAxes | None = None) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers excluded); with `axes`, each shape with its batch axis
    moved first (the layout feeds have inside amos-onnx, see batch_first)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
            axis = (axes or {}).get(value.name, 0)
            if 0 < axis < len(shape):
                shape = (shape[axis], *shape[:axis], *shape[axis + 1:])
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def batch_axes(model: onnx.ModelProto, given: BatchAxes | None = None) -> dict[str, int]:
    """The axis holding each input's samples where it is not the first (a recurrent state [layers, N, H]): as
    given (--batch-axis NAME=AXIS), else told by the model's symbolic dims: an input whose first dim does not
    carry the name the other inputs' first dims share, and exactly one of whose other dims does."""
    specs = {spec.name: spec for spec in input_specs(model)}
    axes: dict[str, int] = {}
    for name, axis in (given or {}).items():
        spec = specs.get(name)
        if spec is None:
            raise DataError(f"--batch-axis {name}={axis}: the model has no input '{name}' "
                            f"(inputs: {', '.join(specs)})")
        if spec.shape is None or not 0 <= axis < len(spec.shape):
            rank = "unknown" if spec.shape is None else len(spec.shape)
            raise DataError(f"--batch-axis {name}={axis}: input '{name}' has rank {rank}")
        if axis:
            axes[name] = axis
    names = {spec.shape[0] for spec in specs.values() if spec.shape and isinstance(spec.shape[0], str)}
    for spec in specs.values():
        if spec.name in (given or {}) or not spec.shape or spec.shape[0] in names:
            continue
        named = [i for i, dim in enumerate(spec.shape) if i and isinstance(dim, str) and dim in names]
        if len(named) == 1:
            axes[spec.name] = named[0]
    return axes


def batch_first(feed: Mapping[str, np.ndarray], axes: BatchAxes) -> dict[str, np.ndarray]:
    """A feed in the model's layout with each input's batch axis moved first (views, no copies)."""
    return {name: np.moveaxis(a, axes[name], 0) if name in axes and a.ndim > axes[name] else a
            for name, a in feed.items()}


def model_layout(feed: Mapping[str, np.ndarray], axes: BatchAxes) -> dict[str, np.ndarray]:
    """A batch-first feed back in the model's layout, for onnxruntime."""
    return {name: np.moveaxis(a, 0, axes[name]) if name in axes and a.ndim > axes[name] else a
            for name, a in feed.items()}


def sliceable(model: onnx.ModelProto, axes: BatchAxes | None = None) -> bool:
    """Whether a feed can be split into fewer rows: every input but the scalars has a free batch dimension (the
    first, or the one `axes` names), and there is one such input."""
    batched = [s for s in input_specs(model, axes) if s.shape != ()]
    return bool(batched) and all(s.shape is not None and not isinstance(s.shape[0], int) for s in batched)


def rows(feed: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start..stop-1 of every input of a (batch-first) feed; a scalar input (rank 0) is the same for every
    row."""
    return {name: array[start:stop] if array.ndim else array for name, array in feed.items()}


def load_npz(path: str | Path, model: onnx.ModelProto,
             axes: BatchAxes | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read an .npz with one array per model input (plus optional labels) and check it fits the model; the
    arrays batch-first (batch_first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    declared = npz_headers(path)
    declared.pop(LABELS, None)
    check_feeds(declared, model, str(path), axes)  # dtypes and shapes from the headers, before decompressing
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory") from None
    labels = arrays.pop(LABELS, None)
    feeds = check_feeds(arrays, model, str(path), axes)
    if labels is not None:
        n = next(iter(feeds.values())).shape[0]
        if labels.ndim != 1 or labels.shape[0] != n:
            raise DataError(f"{path}: '{LABELS}' must be a 1-D array of {n} labels, got shape {list(labels.shape)}")
    return feeds, labels


class Declared(NamedTuple):
    """An .npz member's array as its header declares it (nothing decompressed)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def npz_headers(path: Path) -> dict[str, Declared]:
    """Each array's shape and dtype from its .npy header; a header that declares more bytes than its member
    holds (a corrupt or hostile file) is refused before anything is allocated."""
    headers: dict[str, Declared] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if size > info.file_size:
                    raise DataError(f"{path}: array '{info.filename}' declares {size} bytes but holds "
                                    f"{info.file_size}")
                headers[info.filename.removesuffix(".npy")] = Declared(tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    return headers


def check_feeds(arrays: Mapping[str, np.ndarray | Declared], model: onnx.ModelProto, where: str,
                axes: BatchAxes | None = None) -> dict[str, np.ndarray]:
    """Every model input present with its dtype, rank and fixed dims; the same sample count for all (along each
    input's batch axis, `axes`). The feeds come back batch-first (batch_first)."""
    axes = axes or {}
    feeds: dict[str, Any] = {}
    for spec in input_specs(model, axes):
        if spec.name not in arrays:
            has = ", ".join(sorted(arrays)) or "none"
            raise DataError(f"{where}: no array for model input '{spec.name}' (has: {has})")
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            raise DataError(f"{where}: input '{spec.name}' has dtype {array.dtype}, the model expects {spec.dtype}")
        axis = axes.get(spec.name, 0)
        if 0 < axis < array.ndim:
            array = Declared((array.shape[axis], *array.shape[:axis], *array.shape[axis + 1:]), array.dtype) \
                if isinstance(array, Declared) else np.moveaxis(array, axis, 0)
        _check_shape(spec, array, where)
        feeds[spec.name] = array
    counts = {name: a.shape[0] for name, a in feeds.items() if a.ndim}  # a scalar input serves every sample
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}' {count}" for name, count in counts.items())
        raise DataError(f"{where}: inputs have different sample counts ({listed}) along their batch axes",
                        hint="an input that holds its samples on another axis (a recurrent state [layers, N, H]) "
                             "needs --batch-axis NAME=AXIS")
    if counts and next(iter(counts.values())) == 0:
        raise DataError(f"{where}: data has zero samples")
    return feeds


def _check_shape(spec: InputSpec, array: np.ndarray | Declared, where: str) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise DataError(
            f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model expects rank {len(spec.shape)} "
            f"{_fmt(spec.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if not isinstance(want, int) or want == 0:
            continue
        if (axis == 0 and got % want != 0) or (axis > 0 and got != want):
            raise DataError(f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model expects "
                            f"{_fmt(spec.shape)}")
    if isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError(f"{where}: input '{spec.name}' contains NaN or Inf")


def _fmt(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"


def batch_size(model: onnx.ModelProto, axes: BatchAxes | None = None) -> int:
    """Rows per run: the model's fixed batch dimension, else DEFAULT_BATCH."""
    for spec in input_specs(model, axes):
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            return spec.shape[0]
    return DEFAULT_BATCH


def whole_batches(samples: int, size: int) -> int:
    """`samples` rounded up to whole batches of `size` (at least one batch)."""
    return max(size, -(-samples // size) * size)


def batches(feeds: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of every input along axis 0 (a scalar input, rank 0, goes with every batch)."""
    n = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
    for start in range(0, n, size):
        yield rows(feeds, start, start + size)


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 16,
                 axes: BatchAxes | None = None) -> dict[str, np.ndarray]:
    """Inputs drawn from the specs, batch-first: standard normal floats, small integers; free dims become
    batch (the batch axis) or 32."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model, axes):
        dims = spec.shape if spec.shape is not None else (batch,)
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 32) for i, d in enumerate(dims)]
        if int(np.prod(shape, dtype=np.float64)) > MAX_RANDOM_ELEMENTS:
            raise DataError(f"input '{spec.name}' declares shape {shape}, too large for random inputs; pass --data")
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise DataError(f"input '{spec.name}' has dtype {spec.dtype}; give data with --data")
    return feeds
