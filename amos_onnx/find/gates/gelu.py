"""GELU (opset 20), exact (erf) and tanh-approximated."""

from __future__ import annotations

import math

import numpy as np

from amos_onnx.find.gates import Activation, NodeContext, NoMatch, named, register

GELU_K = 16

_erf = np.frompyfunc(math.erf, 1, 1)


@named("GELU")
def gelu(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), np.float64))


@named("GELU(tanh)")
def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@register("Gelu", 20)
def match_gelu(ctx: NodeContext) -> Activation | NoMatch:
    mode = ctx.attr("approximate", "none")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "none":
        return Activation("Gelu", gelu, GELU_K)
    if mode == "tanh":
        return Activation("Gelu(approximate=tanh)", gelu_tanh, GELU_K)
    return NoMatch(f"Gelu approximate={mode!r} is not 'none' or 'tanh'")
