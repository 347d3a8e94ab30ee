"""ReLU and its piecewise-linear relatives: Relu, LeakyRelu, PRelu, ThresholdedRelu, Clip(min=0)."""

from __future__ import annotations

import numpy as np

from amos_onnx.find.gates import DEFAULT_RANGE, Activation, NodeContext, NoMatch, fmt, named, register

RELU_K = 10
LINEAR_K = 12


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


@named("ReLU6")
def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def leaky(alpha: float):  # type: ignore[no-untyped-def]
    return lambda x: np.where(x > 0, x, alpha * x)


@register("Relu", 6)
def match_relu(ctx: NodeContext) -> Activation | NoMatch:
    return Activation("Relu", relu, RELU_K, relu_like=True)


@register("LeakyRelu", 6)
def match_leaky_relu(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", 0.01))  # type: ignore[arg-type]
    return Activation(f"LeakyRelu(alpha={fmt(alpha)})", leaky(alpha), LINEAR_K, relu_like=alpha == 0.0)


@register("PRelu", 7)
def match_prelu(ctx: NodeContext) -> Activation | NoMatch:
    slope = ctx.constant(1)
    if slope is None:
        return NoMatch("PRelu slope is not a constant")
    slope = slope.astype(np.float64)
    if slope.size == 1 or np.all(slope == slope.flat[0]):
        alpha = float(slope.flat[0])
        return Activation(f"PRelu(slope={fmt(alpha)})", leaky(alpha), LINEAR_K, relu_like=alpha == 0.0)
    rank = ctx.input_rank()
    if rank is None:
        return NoMatch("PRelu has per-channel slopes but its input rank is unknown")
    if slope.ndim > rank:
        return NoMatch(f"PRelu slope of shape {list(slope.shape)} does not broadcast to rank {rank}")
    wide = [i for i, n in enumerate(slope.shape) if n != 1]
    if len(wide) != 1:
        return NoMatch(f"PRelu slope of shape {list(slope.shape)} varies along more than one axis")
    axis = rank - slope.ndim + wide[0]
    slopes = slope.ravel()
    mean = float(slopes.mean())
    label = f"PRelu(slopes={slopes.size}@axis{axis}, mean={fmt(mean)})"
    funcs = tuple(leaky(float(a)) for a in slopes)
    return Activation(label, leaky(mean), LINEAR_K, channel_funcs=funcs, axis=axis)


@register("ThresholdedRelu", 10)
def match_thresholded_relu(ctx: NodeContext) -> Activation | NoMatch:
    alpha = float(ctx.attr("alpha", 1.0))  # type: ignore[arg-type]
    lo, hi = DEFAULT_RANGE
    return Activation(
        f"ThresholdedRelu(alpha={fmt(alpha)})",
        lambda x: np.where(x > alpha, x, 0.0),
        RELU_K,
        lo=min(lo, alpha - 1.0),
        hi=max(hi, alpha + 10.0),
        relu_like=alpha >= 0,
    )


def _clip_activation(lo: float | None, hi: float | None) -> Activation | NoMatch:
    if lo is None or lo != 0.0:
        low = lo if lo is not None else "not a constant"
        return NoMatch(f"Clip min is {low}, not 0 (only ReLU-like clips convert)")
    if hi is None or not np.isfinite(hi) or hi >= 3.0e38:
        return Activation("Relu", relu, RELU_K, relu_like=True)
    if hi <= 0:
        return NoMatch(f"Clip max is {fmt(hi)}, the output is constant")
    return Activation(
        f"Clip(0, {fmt(hi)})",
        lambda x: np.clip(x, 0.0, hi),
        RELU_K,
        lo=min(DEFAULT_RANGE[0], -hi),
        hi=max(DEFAULT_RANGE[1], 1.5 * hi),
        relu_like=True,
    )


@register("Clip", 6)
def match_clip_attr(ctx: NodeContext) -> Activation | NoMatch:
    lo = float(ctx.attr("min", -3.4028234663852886e38))  # type: ignore[arg-type]
    hi = float(ctx.attr("max", 3.4028234663852886e38))  # type: ignore[arg-type]
    return _clip_activation(lo, hi)


def _scalar_input(ctx: NodeContext, index: int, absent: float) -> float | None:
    """A Clip bound given as an input: its scalar value, `absent` when omitted, None when not constant."""
    if not ctx.has_input(index):
        return absent
    value = ctx.constant(index)
    return float(value.ravel()[0]) if value is not None and value.size == 1 else None


@register("Clip", 11)
def match_clip_inputs(ctx: NodeContext) -> Activation | NoMatch:
    hi = _scalar_input(ctx, 2, float("inf"))
    if hi is None:
        return NoMatch("Clip max is not a scalar constant")
    return _clip_activation(_scalar_input(ctx, 1, float("-inf")), hi)
