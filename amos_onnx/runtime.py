"""onnxruntime sessions for original and converted models, with the native gate op when built."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from amos_onnx.errors import DataError, ModelLoadError

log = logging.getLogger(__name__)

NATIVE_ENV = "AMOS_ONNX_NATIVE"  # set to 0 to run the function form even when the library is built
LIBRARY_ENV = "AMOS_ONNX_LIBRARY"  # path of another build of the library (the sanitizer build, say)
_LIBRARY_NAMES = ("libamos_gate.so", "libamos_gate.dylib", "amos_gate.dll")
# onnxruntime's session option for the external data of a model given as bytes (onnxruntime >= 1.21)
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def native_library() -> Path | None:
    """Path of the built native gate library, or None when it is not built or turned off."""
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    folder = Path(__file__).parent / "_native"
    for name in _LIBRARY_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def get_library_path() -> str:
    """Path of the native gate library, for sessions built by hand (the onnxruntime-extensions convention):
    `options.register_custom_ops_library(amos_onnx.get_library_path())`. An error when it is not built."""
    library = native_library()
    if library is None or not library.is_file():
        raise RuntimeError(f"native gate library is not built (or {NATIVE_ENV}=0); run 'make ops'")
    return str(library)


def session(
    model: str | Path | onnx.ModelProto | bytes, *, native: bool | None = None, threads: int | None = None,
    folder: str | Path | None = None, options: ort.SessionOptions | None = None,
    providers: Sequence[str | tuple[str, dict]] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session; registers the native gate library when built (native=None: if available).
    folder: where an in-memory model's external data files are (its model file's folder). options: the caller's
    SessionOptions (the library is registered on them, threads set when given; without them, onnxruntime logs
    fatal messages only: its errors reach the caller as exceptions). providers: onnxruntime's execution
    providers (default CPU): the native op runs on the CPU, the other nodes, and the function form's, where the
    providers place them."""
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: an error reaches the caller as the exception, in one line
    if folder is not None and not isinstance(model, str | Path):
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(Path(folder).resolve()))
    if threads is not None:
        options.intra_op_num_threads = threads
    library = native_library() if native is not False else None
    if native and library is None:
        raise RuntimeError(f"native gate library is not built (or {NATIVE_ENV}=0); run 'make ops'")
    if library is not None:
        try:
            options.register_custom_ops_library(str(library))
        except Exception as exc:  # onnxruntime raises its own pybind types; asked for: an error, else the function form
            if native:
                raise RuntimeError(f"{library}: onnxruntime did not register the native gate op: {exc}") from None
            log.warning("%s: onnxruntime did not register the native gate op (%s); the function form runs",
                        library, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            library = None
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(source, Path):
        source = str(source)
    sess = ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))
    sess._amos_native = library is not None  # type: ignore[attr-defined]
    return sess


def uses_native(sess: ort.InferenceSession) -> bool:
    """Whether this session was created with the native gate library registered."""
    return bool(getattr(sess, "_amos_native", False))


def user_session(model: str | Path | onnx.ModelProto, label: str, **kwargs: object) -> ort.InferenceSession:
    """session() for a model the user gave: onnxruntime's refusal becomes one line naming `label`."""
    try:
        return session(model, **kwargs)  # type: ignore[arg-type]
    except Exception as exc:  # onnxruntime raises several pybind types; the user gets one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{label}: onnxruntime cannot load the model: {text}") from None


def run_checked(sess: ort.InferenceSession, outputs: list[str], feed: dict, label: str) -> list:
    """sess.run, with onnxruntime's failure on the user's data as one line naming `label`."""
    try:
        return sess.run(outputs, feed)
    except Exception as exc:  # as above
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{label}: onnxruntime failed on the data: {text}") from None


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the free pages of the C heap back to the system (glibc's malloc_trim; nothing on other C libraries).
    The tensors onnxruntime frees after each run otherwise stay in glibc's arenas: walking PP-OCRv4 rec segment by
    segment, its resident set was 1.18 GB of which 0.5 GB free (0.68 GB after a trim). A trim costs page faults
    later: about 1 s of rec's 11 s reconstruction, for a peak about 100 MB lower."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
