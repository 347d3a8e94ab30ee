"""Sessions: a native library that onnxruntime does not register is said, never claimed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import activation_model

import amos_onnx
from amos_onnx.runtime import LIBRARY_ENV, session, uses_native


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
