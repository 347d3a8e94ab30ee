"""Load an ONNX model from disk with clear errors, and annotate shapes for the finder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .errors import ModelLoadError

log = logging.getLogger(__name__)

MIN_OPSET = 9
FUNCTION_MIN_OPSET = 12  # the gate function reads its attributes with Constant(value_floats), opset 12


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelLoadError("model imports no default ONNX opset")


def external_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model's initializers name, checked to lie inside `folder`.

    ONNX names external data by path, so a model could point anywhere: an absolute
    path, a '..' component or a symlink leading out of the model's folder is
    refused before anything is read.
    """
    root = folder.resolve()
    files: dict[str, Path] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"initializer '{tensor.name}' external data '{location}'"
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise ModelLoadError(f"{where}: only plain paths inside the model's folder are allowed")
        full = folder / rel
        if not full.is_file():
            raise ModelLoadError(f"{where}: no such file next to the model")
        if not full.resolve().is_relative_to(root):
            raise ModelLoadError(f"{where}: leads outside the model's folder (symlink)")
        files[location] = full
    return list(files.values())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path}: file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not an ONNX model (protobuf parse failed: {exc})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version, graph or opset import)")
    return model


def _check_opset(path: Path, model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in seen:
            raise ModelLoadError(f"{path}: imports an opset for domain '{domain or 'ai.onnx'}' more than once")
        seen.add(domain)
    try:
        opset = default_opset(model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{path}: opset {opset} is below the supported minimum {MIN_OPSET}",
            hint="upgrade it with onnx.version_converter.convert_version(model, 13)",
        )
    if opset > newest:
        raise ModelLoadError(f"{path}: opset {opset} is newer than the newest this onnx knows ({newest})")


def _check_weights(path: Path, model: onnx.ModelProto) -> None:
    """NaN weights make every output meaningless; infinities are allowed (attention masks use them)."""
    for tensor in model.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                onnx.TensorProto.BFLOAT16):
            values = numpy_helper.to_array(tensor)
            if values.dtype.kind == "f" and np.isnan(values).any():
                raise ModelLoadError(f"{path}: initializer '{tensor.name}' contains NaN")


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, parse and fully check a model file (and its external data); raises ModelLoadError naming the file."""
    return read_model(path)[0]


def read_model(path: str | Path) -> tuple[onnx.ModelProto, list[Path]]:
    """load_model, plus the external data files the model was read from (an output must not overwrite them)."""
    path = Path(path)
    model = _parse(path)
    _check_opset(path, model)
    try:
        files = external_files(model, path.parent)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read external data: {_first_line(exc)}") from None
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: model fails the ONNX checker: {_first_line(exc)}") from None
    _check_weights(path, model)
    return model, files


def with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with inferred value_info (the original when inference fails)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        log.info("shape inference failed, continuing without shapes: %s", exc)
        return model


def raise_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The model converted to opset `target` (when lower), or a ModelLoadError saying why not."""
    if default_opset(model) >= target:
        return model
    try:
        raised = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(raised)
    except Exception as exc:  # the converter raises many types; the user gets one line either way
        raise ModelLoadError(
            f"opset {default_opset(model)} model could not be raised to opset {target} for the function form: {exc}",
            hint="use --emit inline, which keeps the model's opset",
        ) from None
    return raised
