"""Check and write a model atomically: a temporary file in the target folder, renamed when complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .errors import OutputPathError


def check_output_path(out: str | Path, inputs: list[str | Path]) -> Path:
    """Refuse an output path that is an input, or whose folder is missing or not writable."""
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


def save_model(model: onnx.ModelProto, out: str | Path) -> None:
    """Run the full checker, then write to a temporary file beside `out` and rename it into place."""
    out = Path(out)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(f"{out}: writing failed ({exc.strerror}); nothing was written") from None
    except BaseException:  # an interrupt: leave no partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise
