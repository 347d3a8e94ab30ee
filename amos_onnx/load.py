"""Load an ONNX model from disk with clear errors, and annotate shapes for the finder."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError

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


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, parse and check a model file; raises ModelLoadError naming the file."""
    path = Path(path)
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
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: model fails the ONNX checker: {first}") from None
    try:
        opset = default_opset(model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{path}: opset {opset} is below the supported minimum {MIN_OPSET}",
            hint="upgrade it with onnx.version_converter.convert_version(model, 13)",
        )
    return model


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
