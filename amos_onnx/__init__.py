"""amos-onnx: turn any ONNX network into its AMOS spiking twin (at most one spike per neuron)."""

from __future__ import annotations

from . import errors
from .api import convert, fit, inspect, report, session, validate
from .errors import AmosError
from .images import ImageOptions
from .neuron import GateParams, preset, simulate

__all__ = ["convert", "inspect", "validate", "report", "fit", "session", "errors", "AmosError", "GateParams", "preset",
           "simulate", "ImageOptions"]
__version__ = "0.1.0"
