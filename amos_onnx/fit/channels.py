"""Per-channel gates: a site's channels grouped by where their values lie, one refined gate per group."""

from __future__ import annotations

import numpy as np

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.find.gates import Activation
from amos_onnx.fit.kernel import sample_error
from amos_onnx.fit.search import GRID_FLOOR, FitResult, refine
from amos_onnx.gate import GateParams

CHANNEL_MIN_SAMPLES = 64  # a channel with fewer calibration values keeps the site's gate
CHANNEL_GROUPS = 8  # at most this many refined gates per site: channels with alike values share one
# A group's range: its channels' exact range widened by this share of its width on each side (within the site's),
# since a channel's values from fresh inputs leave its calibrated range more often than the site's do
# (tests/test_per_channel.py measures the trade on fresh inputs).
CHANNEL_MARGIN = 0.5


def channel_groups(spans: np.ndarray, groups: int) -> np.ndarray:
    """A group index per channel: k-means (deterministic, from channels evenly spaced in the order of their
    midpoints) on each channel's [low, high] value span, so channels whose values lie alike share a gate."""
    n = len(spans)
    if n <= groups:
        return np.arange(n)
    order = np.argsort(spans.mean(axis=1), kind="stable")
    centres = spans[order[np.linspace(0, n - 1, groups).round().astype(int)]].astype(np.float64)
    label = np.zeros(n, dtype=np.int64)
    for _ in range(50):
        label = np.argmin(((spans[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        moved = np.array([spans[label == g].mean(axis=0) if (label == g).any() else centres[g] for g in range(groups)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return np.unique(label, return_inverse=True)[1]


def channel_gates(act: Activation, site: FitResult, res: Reservoir, lam: float, range_weight: float = GRID_FLOOR,
                  kicks: int = 0, seed: int = 0) -> tuple[GateParams, float, float, float]:
    """One gate per channel of the site's input (along res.axis): channels grouped by where their values lie
    (channel_groups on their 1%..99% quantiles, CHANNEL_GROUPS at most), the site's gate refined on each group's
    values over the group's range (exact, widened by CHANNEL_MARGIN; search.refine with the same absolute spike
    penalty and range_weight, and `kicks` local-search moves seeded by `seed`); a channel with fewer than
    CHANNEL_MIN_SAMPLES values keeps the site's gate. With the MSE, max error and mean spikes of those gates on all
    the samples."""
    order = np.argsort(res.channels, kind="stable")
    edges = np.searchsorted(res.channels[order], np.arange(res.channel_count + 1))
    values = [res.values[order[edges[c]:edges[c + 1]]] for c in range(res.channel_count)]
    sampled = [c for c in range(res.channel_count) if values[c].size >= CHANNEL_MIN_SAMPLES]
    group = np.zeros(res.channel_count, dtype=np.int64)  # 0: the site's gate; g + 1: refined gate g
    gates = [site.params]
    if sampled:
        spans = np.array([np.quantile(values[c], [0.01, 0.99]) for c in sampled])
        label = channel_groups(spans, CHANNEL_GROUPS)
        for g in range(int(label.max()) + 1):
            members = [c for c, lab in zip(sampled, label) if lab == g]
            lo, hi = float(res.channel_lo[members].min()), float(res.channel_hi[members].max())
            margin = CHANNEL_MARGIN * (hi - lo)
            lo, hi = max(lo - margin, site.lo), min(hi + margin, site.hi)
            if act.relu_like:
                lo = min(lo, 0.0)
            if hi - lo < 1e-3:
                lo, hi = lo - 0.5, hi + 0.5
            x = np.concatenate([values[c] for c in members])
            gates.append(refine(act.func, lo, hi, x, site.params, relu_like=act.relu_like, spike_penalty=lam,
                                range_weight=range_weight, kicks=kicks, seed=seed))
            group[members] = len(gates) - 1
    squares, worst, spikes = 0.0, 0.0, 0.0  # over all the samples, one simulation per gate
    of_value = group[res.channels]
    for g, gate in enumerate(gates):
        x = res.values[of_value == g]
        if x.size:
            mse, most, mean_spikes = sample_error(gate, act.func, x)
            squares, worst, spikes = squares + mse * x.size, max(worst, most), spikes + mean_spikes * x.size
    n = max(res.values.size, 1)
    per = [gates[g] for g in group]
    params = GateParams(np.stack([g.thresholds for g in per]), np.stack([g.resets for g in per]),
                        np.stack([g.weights for g in per]), axis=res.axis)
    return params, squares / n, worst, spikes / n
