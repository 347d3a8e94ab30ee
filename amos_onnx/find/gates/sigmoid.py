"""Sigmoid-shaped gates: Sigmoid, HardSigmoid, Tanh, Softsign, HardSwish."""

from __future__ import annotations

import numpy as np

from amos_onnx.find.gates import Activation, NodeContext, NoMatch, fmt, named, register

SMOOTH_K = 12
SWISH_K = 16


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@named("SiLU")
def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def hard_sigmoid(alpha: float, beta: float):  # type: ignore[no-untyped-def]
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


@named("HardSwish")
def hard_swish(x: np.ndarray) -> np.ndarray:
    """ONNX's HardSwish: x * HardSigmoid(x) with alpha 1/6, beta 0.5."""
    return x * hard_sigmoid(1.0 / 6.0, 0.5)(x)


@register("Sigmoid", 6)
def match_sigmoid(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Sigmoid", sigmoid, SMOOTH_K)


@register("HardSigmoid", 6)
def match_hard_sigmoid(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", 0.2))  # type: ignore[arg-type]
    beta = float(ctx.attr("beta", 0.5))  # type: ignore[arg-type]
    return Activation(f"HardSigmoid(alpha={fmt(alpha)}, beta={fmt(beta)})", hard_sigmoid(alpha, beta), SMOOTH_K)


@register("Tanh", 6)
def match_tanh(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Tanh", np.tanh, SMOOTH_K)


@register("Softsign", 1)
def match_softsign(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Softsign", lambda x: x / (1.0 + np.abs(x)), SMOOTH_K)


@register("HardSwish", 14)
def match_hard_swish(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("HardSwish", hard_swish, SWISH_K)
