"""Exponential-linear and softplus families: Elu, Selu, Celu, Softplus, Mish."""

from __future__ import annotations

import numpy as np

from amos_onnx.find.gates import Activation, NodeContext, NoMatch, fmt, named, register

SMOOTH_K = 12
MISH_K = 16

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102710723876953125


def _expm1_neg(x: np.ndarray) -> np.ndarray:
    """exp(x) - 1 for x <= 0, without overflow warnings for large positive x."""
    return np.expm1(np.minimum(x, 0.0))


@named("Softplus")
def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


@named("Mish")
def mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(softplus(x))


@register("Elu", 6)
def match_elu(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", 1.0))  # type: ignore[arg-type]
    return Activation(f"Elu(alpha={fmt(alpha)})", lambda x: np.where(x > 0, x, alpha * _expm1_neg(x)), SMOOTH_K)


@register("Selu", 6)
def match_selu(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", SELU_ALPHA))  # type: ignore[arg-type]
    gamma = float(ctx.attr("gamma", SELU_GAMMA))  # type: ignore[arg-type]
    return Activation(
        f"Selu(alpha={fmt(alpha)}, gamma={fmt(gamma)})",
        lambda x: gamma * np.where(x > 0, x, alpha * _expm1_neg(x)),
        SMOOTH_K,
    )


@register("Celu", 12)
def match_celu(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", 1.0))  # type: ignore[arg-type]
    if alpha == 0.0:
        return NoMatch("Celu alpha is 0 (undefined)")
    return Activation(
        f"Celu(alpha={fmt(alpha)})",
        lambda x: np.maximum(x, 0.0) + np.minimum(0.0, alpha * _expm1_neg(x / alpha)),
        SMOOTH_K,
    )


@register("Softplus", 1)
def match_softplus(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Softplus", softplus, SMOOTH_K)


@register("Mish", 18)
def match_mish(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Mish", mish, MISH_K)
