"""Check and write a model atomically: a temporary file in the target folder, renamed when complete.

A model whose large weights stayed on disk (load.read_model) gets them copied, tensor by tensor in bounded
chunks, into one data file next to the output, "<output name>.data"; the model is checked by path
against that file before it is renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import onnx

from amos_onnx.errors import OutputPathError


def check_output_path(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Refuse an output path that is an input, names a folder, or whose folder is missing or not writable."""
    if str(out).endswith(("/", os.sep)):
        raise OutputPathError(f"{out}: output path names a folder; give a file name")
    out = Path(out)
    for path in inputs:
        if Path(path).exists() and out.exists() and out.resolve() == Path(path).resolve():
            raise OutputPathError(f"{out}: output path is the input model; choose another name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(f"{out}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"{out}: output folder {folder} is not writable")
    if out.is_dir():
        raise OutputPathError(f"{out}: output path is a folder")
    return out


COPY_CHUNK = 1 << 24  # bytes per read when copying external weights


def data_path(out: str | Path) -> Path:
    """The data file written beside an output whose weights are external."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def _temp(out: Path, suffix: str) -> tuple[int, str]:
    """A temporary file beside `out` with the mode `out` will have: an existing file's, else the umask's."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write there ({exc.strerror})") from None
    try:
        mode = out.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)
    return fd, name


def _copy_external(model: onnx.ModelProto, source: Path, handle: BinaryIO, location: str) -> None:
    """Append every external tensor's bytes to `handle` and point the tensor at `location` (in place)."""
    from amos_onnx.load import external_span

    written = 0
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        name, offset, length = external_span(tensor)
        with open(source / name, "rb") as src:
            src.seek(offset)
            remaining = length if length is not None else -1
            copied = 0
            while remaining != 0:
                block = src.read(COPY_CHUNK if remaining < 0 else min(COPY_CHUNK, remaining))
                if not block:
                    break
                handle.write(block)
                copied += len(block)
                remaining = remaining - len(block) if remaining > 0 else remaining
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(written)), ("length", str(copied))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        written += copied


def save_model(model: onnx.ModelProto, out: str | Path, source: str | Path | None = None,
               full_check: bool = True) -> None:
    """Check (onnx.checker's full check, or its basic one for a model whose input passed only that), then write
    to temporary files beside `out` and rename them into place. `source` is the folder of the model's external
    data files, when some weights stayed there."""
    from amos_onnx.load import has_external_data

    out = Path(out)
    external = has_external_data(model)
    if not external:
        onnx.checker.check_model(model, full_check=full_check)
    written: list[str] = []
    try:
        if external:
            if source is None:
                raise ValueError("a model with external data needs the folder of its data files")
            fd, tmp_data = _temp(data_path(out), ".tmp")
            written.append(tmp_data)
            with os.fdopen(fd, "wb") as handle:
                _copy_external(model, Path(source), handle, data_path(out).name)
        data = model.SerializeToString()
        fd, tmp = _temp(out, ".tmp")
        written.append(tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if external:
            os.replace(written[0], data_path(out))
            written[0] = str(data_path(out))
            onnx.checker.check_model(tmp, full_check=full_check)  # by path, against the data file just written
        os.replace(tmp, out)
    except OSError as exc:
        for name in written:
            Path(name).unlink(missing_ok=True)
        raise OutputPathError(f"{out}: writing failed ({exc.strerror}); nothing was written") from None
    except BaseException:  # an interrupt or a failed check: leave no partial file behind
        for name in written:
            Path(name).unlink(missing_ok=True)
        raise
