"""amos-onnx: turn any ONNX network into its AMOS spiking twin (at most one spike per neuron).

The public API is this module's __all__; the stage packages (find, data, calibrate, fit, compensate, rewrite,
report, and cluster for Ray) hold the rest, and no name exported here shadows one of them.
"""

from __future__ import annotations

from amos_onnx import errors
from amos_onnx.api import fit_function, write_report
from amos_onnx.data.dataset import CalibrationDataReader, open_data
from amos_onnx.data.images import ImageOptions
from amos_onnx.errors import AmosError
from amos_onnx.fit.library import named_activations
from amos_onnx.gate import GateParams, preset, simulate
from amos_onnx.options import RayOptions
from amos_onnx.pipeline import convert, inspect
from amos_onnx.report.validate import validate
from amos_onnx.runtime import get_library_path, session

__all__ = ["convert", "inspect", "validate", "write_report", "fit_function", "session", "get_library_path",
           "named_activations", "open_data", "CalibrationDataReader", "ImageOptions", "RayOptions", "errors",
           "AmosError", "GateParams", "preset", "simulate"]
__version__ = "0.1.0"
