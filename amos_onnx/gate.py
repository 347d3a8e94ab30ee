"""The AMOS spiking gate: its parameters, the numpy reference and spike counts.

One gate is K neurons with thresholds T, reset amounts h and output weights d:

    v = x ; y = 0
    for t in 1..K:
        z = v > T_t          (strict)
        y = y + d_t  where z
        v = v - h_t  where z (h_K is never used)

Every neuron fires at most once per input. Parameters are float32 vectors of
length K (one gate shared by all elements) or [C, K] arrays with a channel axis
(one gate per channel, for PRelu slopes and per-channel fits).

A gate of several chains (`chains`, shared gates only) is that many such circuits
of K neurons side by side, each reading x, their outputs added in chain order:
y = ((y_1 + y_2) + ...). Its parameters are the chains' vectors one after the
other (chains * K values). The chains run in the same K time steps, so the gate's
latency stays K while it has chains * K neurons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_K = 64


@dataclass(frozen=True)
class GateParams:
    """T, h, d of one gate; [K] shared, or [C, K] per channel along `axis`."""

    thresholds: np.ndarray
    resets: np.ndarray
    weights: np.ndarray
    axis: int | None = None
    chains: int = 1  # circuits of K neurons side by side (shared gates only): parameters chains * K long

    def __post_init__(self) -> None:
        arrays = []
        for name in ("thresholds", "resets", "weights"):
            # "+ 0.0" turns -0.0 into +0.0 so every emission form adds the same bits.
            value = np.asarray(getattr(self, name), dtype=np.float32) + np.float32(0.0)
            object.__setattr__(self, name, value)
            arrays.append(value)
        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays) or len(shape) not in (1, 2):
            raise ValueError(f"gate parameters must share a [K] or [C, K] shape, got {[a.shape for a in arrays]}")
        if (len(shape) == 2) != (self.axis is not None):
            raise ValueError("per-channel parameters need an axis, shared ones none")
        if self.chains < 1 or (self.chains > 1 and self.axis is not None) or shape[-1] % self.chains:
            raise ValueError(f"{self.chains} chains need a shared gate of a multiple of {self.chains} neurons, got "
                             f"{shape} parameters")
        if not 1 <= shape[-1] // self.chains <= MAX_K:
            raise ValueError(f"K must be in 1..{MAX_K}, got {shape[-1] // self.chains}")

    @property
    def k(self) -> int:
        """Neurons per chain: the gate's latency in time steps."""
        return int(self.thresholds.shape[-1]) // self.chains

    @property
    def neurons(self) -> int:
        """Neurons per element, every chain's."""
        return int(self.thresholds.shape[-1])

    def chain(self, c: int) -> GateParams:
        """Chain c alone, as a one-chain gate."""
        cut = slice(c * self.k, (c + 1) * self.k)
        return GateParams(self.thresholds[cut], self.resets[cut], self.weights[cut])

    @property
    def channels(self) -> int | None:
        return int(self.thresholds.shape[0]) if self.axis is not None else None

    def step(self, t: int, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """T_t, h_t, d_t as float32 arrays that broadcast against an input of `rank`."""
        if self.axis is None:
            return self.thresholds[t], self.resets[t], self.weights[t]
        shape = (-1,) + (1,) * (rank - 1 - self.axis)
        return tuple(a[:, t].reshape(shape) for a in (self.thresholds, self.resets, self.weights))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "thresholds": self.thresholds.tolist(),
            "resets": self.resets.tolist(),
            "weights": self.weights.tolist(),
            "axis": self.axis,
            **({"chains": self.chains} if self.chains > 1 else {}),
        }


def of_chains(chains: list[GateParams]) -> GateParams:
    """One gate of these one-chain gates (of one K) side by side."""
    return GateParams(np.concatenate([c.thresholds for c in chains]), np.concatenate([c.resets for c in chains]),
                      np.concatenate([c.weights for c in chains]), chains=len(chains))


def simulate(params: GateParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the gate on x in float32; returns (output, spikes per element)."""
    if params.chains > 1:
        return add_chains(simulate, params, x)
    v = np.array(x, dtype=np.float32)  # a copy: the membrane is updated in place
    y = np.zeros(v.shape, dtype=np.float32)
    spikes = np.zeros(v.shape, dtype=np.int32)
    # With finite parameters, adding weight * z (and subtracting reset * z) adds exactly the weight where the
    # neuron fires and a zero elsewhere: the same float32 values as Where(z, y + weight, y), five times faster. An
    # infinite reset or weight times a zero would be NaN: such gates take the Where form.
    finite = all(np.all(np.isfinite(a)) for a in (params.resets, params.weights))
    for t in range(params.k):
        threshold, reset, weight = params.step(t, v.ndim)
        z = v > threshold
        if finite:
            y += weight * z
        else:
            y = np.where(z, y + weight, y)
        spikes += z
        if t < params.k - 1:
            if finite:
                v -= reset * z
            else:
                v = np.where(z, v - reset, v)
    return y, spikes


def add_chains(run: Simulator, params: GateParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A gate of several chains run chain by chain (by `run`), outputs added in chain order, spikes summed."""
    y, spikes = run(params.chain(0), x)
    for c in range(1, params.chains):
        yc, sc = run(params.chain(c), x)
        y, spikes = y + yc, spikes + sc
    return y, spikes


def binary_relu(k: int, alpha: float) -> GateParams:
    """The published ReLU gate: T = h = d = alpha * 2^-t (binary successive approximation)."""
    values = alpha * np.exp2(-np.arange(1, k + 1, dtype=np.float64))
    return GateParams(values, values, values)


def binary_relu_closed_form(x: np.ndarray, k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of `binary_relu`: delta * clip(ceil(x/delta) - 1, 0, 2^K - 1) and its popcount."""
    delta = np.float32(alpha * 2.0**-k)
    x32 = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        code = np.clip(np.ceil(x32 / delta) - 1, 0, 2**k - 1)
    code = np.nan_to_num(code, nan=0.0).astype(np.int64)
    spikes = np.zeros(code.shape, dtype=np.int32)
    for bit in range(k):
        spikes += ((code >> bit) & 1).astype(np.int32)
    return (code.astype(np.float32) * delta).astype(np.float32), spikes


_SILU_K16 = {
    "resets": [0.7844085, 1.7550646, 1.4212719, 1.9244663, 1.4400164, 1.9249276, 1.6100428, 1.29061,
               0.83985287, 3.0827985, 0.43503317, 0.5155389, 0.3269445, 7.618048, -14.419675, 0],
    "weights": [0.40088242, 1.8856316, 1.4915457, 1.947229, 1.4717816, 1.9147849, 1.6389303, 1.2934641,
                0.8703124, 0.68460804, 0.44262582, 0.32832766, 0.13907616, -0.26217145, 0.23736191,
                -0.14830568],
    "thresholds": [0.05946945, 1.6541206, 1.3066754, 1.3267198, 1.1000695, 1.2308974, 1.1188028,
                   0.9472501, 0.5447531, 1.0236325, 0.11921431, -0.12855051, -0.44731247, -2.1383545,
                   1.0, -4.109145],
}

_SIGMOID_K12 = {
    "resets": [1.6558512, 1.0989026, 10.7739, 1.3579437, 1.0146959, 0.8972655, 2.1207616, 1.6949341,
               3.6397197, -2.1483946, 5.1177883, 0],
    "weights": [0.37689912, 0.21977554, 0.40271342, 0.17005783, 0.09584032, 0.06293014, 0.04360681,
                -0.0443096, 0.01999909, 0.07107325, 0.01502249, 0.01021793],
    "thresholds": [-0.00824843, -0.9319625, 1.0080122, -1.2074932, -1.7885877, -2.7065408, -3.2715735,
                   0.07132628, -3.719372, -0.543918, -3.7693157, -5.5447803],
}


def preset(name: str) -> GateParams:
    """The published parameters (Stöckl & Maass): 'relu-k10', 'silu-k16', 'sigmoid-k12'."""
    if name == "relu-k10":
        return binary_relu(10, 25.0)
    tables = {"silu-k16": _SILU_K16, "sigmoid-k12": _SIGMOID_K12}
    if name not in tables:
        raise KeyError(f"unknown preset {name!r}; known: relu-k10, silu-k16, sigmoid-k12")
    table = tables[name]
    T, h, d = (np.asarray(table[key], np.float32) for key in ("thresholds", "resets", "weights"))
    return GateParams(T, h, d)


PRESETS = ("relu-k10", "silu-k16", "sigmoid-k12")


Simulator = Callable[[GateParams, np.ndarray], tuple[np.ndarray, np.ndarray]]


def sample_error(params: GateParams, func: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                 simulator: Simulator = simulate) -> tuple[float, float, float]:
    """MSE, max error and mean spikes of a gate against its function on the values x (any shape the gate takes:
    a per-channel gate needs its channel axis), the gate run by `simulator` (simulate, or the fitter's C form)."""
    y, s = simulator(params, x)
    err = y.astype(np.float64) - func(np.asarray(x, np.float64))
    return float(np.mean(err**2)), float(np.max(np.abs(err))), float(np.mean(s))
