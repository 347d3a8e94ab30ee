"""Load an ONNX model from disk with clear errors, and annotate shapes for the finder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from amos_onnx.errors import ModelLoadError

log = logging.getLogger(__name__)

MIN_OPSET = 9
FUNCTION_MIN_OPSET = 12  # the gate function reads its attributes with Constant(value_floats), opset 12
# External tensors up to this size are read into memory (scalar constants, slopes, shapes: what the finder
# reads); larger ones stay on disk and are streamed where needed, so memory does not grow with the weights.
SMALL_EXTERNAL = 1 << 16
NAN_CHUNK = 1 << 24  # elements per step of the NaN scan over external weights


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelLoadError("model imports no default ONNX opset")


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The top-level graph's constant tensors by name (graph_constants)."""
    return graph_constants(model.graph)


def graph_constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """A graph's constant tensors by name: initializers and Constant nodes' values (exporters such as paddle2onnx
    write weights and biases as Constant nodes)."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


def _tensors(graph: onnx.GraphProto, within: str = "") -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    """Every tensor of the graph, with where it is and whether it is a top-level initializer: initializers,
    node attributes' tensors (Constant's value, say), and those of subgraphs (If, Loop, Scan bodies), nested."""
    for tensor in graph.initializer:
        yield f"{within}initializer '{tensor.name}'", tensor, not within
    for node in graph.node:
        label = node.name or (node.output[0] if node.output else node.op_type)
        for attr in node.attribute:
            where = f"{within}node '{label}' attribute '{attr.name}'"
            if attr.HasField("t"):
                yield where, attr.t, False
            for tensor in attr.tensors:
                yield where, tensor, False
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub, f"{within}subgraph '{attr.name}' of node '{label}': ")


def external_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model's tensors name (initializers, Constant nodes, subgraphs), checked to lie
    inside `folder`.

    ONNX names external data by path, so a model could point anywhere: an absolute
    path, a '..' component or a symlink leading out of the model's folder is
    refused before anything is read.
    """
    root = folder.resolve()
    files: dict[str, Path] = {}
    for what, tensor, _ in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"{what} external data '{location}'"
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise ModelLoadError(f"{where}: only plain paths inside the model's folder are allowed")
        full = folder / rel
        if not full.is_file():
            raise ModelLoadError(f"{where}: no such file next to the model")
        if not full.resolve().is_relative_to(root):
            raise ModelLoadError(f"{where}: leads outside the model's folder (symlink)")
        _check_span(entries, full, where)
        files[location] = full
    return list(files.values())


def _check_span(entries: dict[str, str], full: Path, where: str) -> None:
    """offset and length: whole numbers, not negative, within the file."""
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", 0))
    except ValueError:
        raise ModelLoadError(f"{where}: offset and length must be whole numbers") from None
    if offset < 0 or length < 0:
        raise ModelLoadError(f"{where}: offset {offset} and length {length} must not be negative")
    size = full.stat().st_size
    if offset + length > size:
        raise ModelLoadError(f"{where}: offset {offset} + length {length} reaches past the file's {size} bytes")


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


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def external_span(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None for "to the end") of an external tensor."""
    entries = {e.key: e.value for e in tensor.external_data}
    length = entries.get("length")
    return entries["location"], int(entries.get("offset", 0)), int(length) if length is not None else None


def _external_array(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """An external tensor as a read-only memory map (nothing is read until it is used)."""
    location, offset, _ = external_span(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if count == 0:
        return np.empty(tuple(tensor.dims), dtype)
    return np.memmap(folder / location, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _load_small_external(model: onnx.ModelProto, folder: Path) -> None:
    """Read external top-level initializers of at most SMALL_EXTERNAL bytes into the model (larger ones stay on
    disk), and every other external tensor (Constant nodes, subgraphs), whose data the output then carries."""
    for _, tensor, top in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        _, _, length = external_span(tensor)
        if not top or (length is not None and length <= SMALL_EXTERNAL):
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def _check_weights(path: Path, model: onnx.ModelProto) -> None:
    """NaN weights make every output meaningless; infinities are allowed (attention masks use them).
    External weights are scanned through memory maps, a chunk at a time."""
    for tensor in model.graph.initializer:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                    onnx.TensorProto.BFLOAT16):
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            values = _external_array(tensor, path.parent)
            if tensor.data_type == onnx.TensorProto.BFLOAT16:  # as uint16: NaN is exponent all ones, mantissa set
                bits = values.view(np.uint16)
                nan = any(np.any((bits[i : i + NAN_CHUNK] & 0x7FFF) > 0x7F80) for i in range(0, bits.size, NAN_CHUNK))
            else:
                nan = any(np.isnan(values[i : i + NAN_CHUNK]).any() for i in range(0, values.size, NAN_CHUNK))
        else:
            array = numpy_helper.to_array(tensor)
            nan = array.dtype.kind == "f" and bool(np.isnan(array).any())
        if nan:
            raise ModelLoadError(f"{path}: initializer '{tensor.name}' contains NaN")


def load_model(path: str | Path, weights: bool = True) -> onnx.ModelProto:
    """Read, parse and check a model file; raises ModelLoadError naming the file. Large external
    tensors stay on disk (see read_model); weights=False skips the NaN scan of the weights."""
    return read_model(path, weights).model


class Read(NamedTuple):
    """A model read by read_model: the external data files it names (an output must not overwrite them), and
    `loose`: None when it passes onnx.checker's full check, else the full check's complaint (check_loosely)."""

    model: onnx.ModelProto
    files: list[Path]
    loose: str | None


def read_model(path: str | Path, weights: bool = True) -> Read:
    """load_model, plus the external data files the model names and how strictly it passed the checker.

    External tensors larger than SMALL_EXTERNAL stay in their files: sessions read them from the model's
    folder (runtime.session's `folder`) and save_model streams them next to the output."""
    path = Path(path)
    model = _parse(path)
    _check_opset(path, model)
    try:
        files = external_files(model, path.parent)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    try:
        _load_small_external(model, path.parent)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read external data: {_first_line(exc)}") from None
    loose = check_loosely(path)
    if weights:
        try:
            _check_weights(path, model)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read external data: {_first_line(exc)}") from None
    return Read(model, files, loose)


_CHECK_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError, OSError)


def check_loosely(path: Path) -> str | None:
    """onnx.checker's full check of the file (by path: external data is checked in place); None when it passes.
    A model that fails only there (its shape inference disagrees with value_info the model carries, which
    onnxruntime merges leniently) but passes the basic check and loads in onnxruntime is accepted: the full
    check's complaint is returned. Anything else is a ModelLoadError."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return None
    except _CHECK_ERRORS as exc:
        complaint = _first_line(exc)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except _CHECK_ERRORS:
        raise ModelLoadError(f"{path}: model fails the ONNX checker: {complaint}") from None
    from amos_onnx.runtime import session

    try:
        session(path, native=False)
    except Exception as exc:  # onnxruntime raises several pybind types
        raise ModelLoadError(f"{path}: model fails the ONNX checker ({complaint}) and onnxruntime cannot load it: "
                             f"{_first_line(exc)}") from None
    return complaint


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
        if not has_external_data(raised):  # with weights on disk the saved file is checked by path instead
            onnx.checker.check_model(raised)
    except Exception as exc:  # the converter raises many types; the user gets one line either way
        raise ModelLoadError(
            f"opset {default_opset(model)} model could not be raised to opset {target} for the function form: {exc}",
            hint="use --emit inline, which keeps the model's opset",
        ) from None
    return raised
