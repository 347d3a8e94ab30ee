"""Sessions: a native library that onnxruntime does not register is said, never claimed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import activation_model

import amos_onnx
from amos_onnx.runtime import LIBRARY_ENV, _malloc_trim, release_freed_memory, session, uses_native


def test_a_library_onnxruntime_refuses_leaves_the_function_form_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A library that fails to register (here a file that is no library, as an op library built for a newer
    onnxruntime API than the one installed returns an error): by default the session runs the function form,
    is not marked native and a warning names the library; asked for the native op, it is an error."""
    broken = tmp_path / "libamos_gate.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setenv(LIBRARY_ENV, str(broken))
    src = tmp_path / "relu.onnx"
    amos_onnx.convert(_saved(tmp_path), src, k=4)
    with caplog.at_level(logging.WARNING):
        sess = session(src)
    assert not uses_native(sess) and "did not register the native gate op" in caplog.text
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    assert sess.run(None, {"x": x})[0].shape == (2, 16)
    with pytest.raises(RuntimeError, match="did not register the native gate op"):
        session(src, native=True)


def _saved(tmp_path: Path) -> Path:
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(activation_model("Relu", 17), str(path))
    return path


def test_session_takes_the_callers_options_and_providers(tmp_path: Path) -> None:
    """session(options=, providers=): the caller's SessionOptions (here no graph optimisation, one thread) are
    the session's, with the native op registered on them; the providers are the ones given. The converted model's
    output equals the function form's to the bit."""
    import onnxruntime as ort

    src = tmp_path / "relu.onnx"
    amos_onnx.convert(_saved(tmp_path), src, k=4)
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = session(src, options=options, providers=["CPUExecutionProvider"], threads=1)
    assert uses_native(sess) and sess.get_providers() == ["CPUExecutionProvider"]
    kept = sess.get_session_options()
    assert kept.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert kept.intra_op_num_threads == 1
    assert np.array_equal(sess.run(None, {"x": x})[0], session(src, native=False).run(None, {"x": x})[0])


def test_get_library_path_registers_the_native_op_in_a_session_built_by_hand(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """amos_onnx.get_library_path(): the library a hand-built session registers; its profile then shows the
    AmosGate kernel, and its output equals the function form's to the bit. Not built: an error saying how."""
    import json

    import onnxruntime as ort

    src = tmp_path / "relu.onnx"
    amos_onnx.convert(_saved(tmp_path), src, k=4)
    options = ort.SessionOptions()
    options.register_custom_ops_library(amos_onnx.get_library_path())
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    y = sess.run(None, {"x": x})[0]
    events = json.loads(Path(sess.end_profiling()).read_text())
    assert "AmosGate" in {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e["args"]}
    assert np.array_equal(y, session(src, native=False).run(None, {"x": x})[0])
    monkeypatch.setenv("AMOS_ONNX_NATIVE", "0")
    with pytest.raises(RuntimeError, match="make ops"):
        amos_onnx.get_library_path()


def _resident_mib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


@pytest.mark.skipif(_malloc_trim() is None or not Path("/proc/self/statm").exists(), reason="glibc on Linux only")
def test_release_freed_memory_gives_the_c_heaps_free_pages_back() -> None:
    """256 MiB of small arrays (8 KB each, from the C heap) freed stay resident until release_freed_memory()
    returns them to the system (a walk calls it after each segment)."""
    before = _resident_mib()
    blocks = [np.ones(1000) for _ in range(32768)]
    assert _resident_mib() - before > 200
    last = blocks[-1]  # one block at the heap's top, as an array still in use would be
    del blocks
    held = _resident_mib()
    release_freed_memory()
    assert held - _resident_mib() > 200 and last.sum() == 1000
