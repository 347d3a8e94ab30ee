"""The spike penalty spread by measured effect: a site whose gate error the network passes on to its outputs pays
less per spike, one whose error it drowns pays more.

Spread by the share of gate evaluations alone (fit.sites._shares), one unit of relative squared error costs the
same at every site; the outputs disagree: the same relative error moved a Fashion-MNIST ResNet's outputs 20 times
more at its stem than at its last residual branch. So with calibration each site's sensitivity is measured: its
error-only gate alone in place (the focus's switched model, on the kept calibration samples), the outputs' change
(fit.change.output_change) over that gate's relative squared error on its samples. A fit's penalty is then scaled
by the sensitivities' geometric mean over its own (within WEIGHT_LIMIT either way), so that at the optimum one
spike buys about the same change of the outputs wherever it is spent.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.change import MEASURED_TYPES, output_change
from amos_onnx.fit.site_fit import SiteFit
from amos_onnx.options import FitOptions

if TYPE_CHECKING:
    from amos_onnx.pipeline import Plan

WEIGHT_LIMIT = 16.0  # a fit's penalty is scaled by at most this factor, up or down


def measured_sites(p: Plan, fits: dict[str, SiteFit]) -> list[Site]:
    """The sites whose sensitivity is measured: converting, floating-point, top-level, calibrated fits."""
    return [s for s in p.sites if s.converts and not s.graph and s.dtype in MEASURED_TYPES and s.name in fits
            and fits[s.name].calibrated and s.samples in p.reservoirs]


def effect_weights(p: Plan, options: FitOptions) -> tuple[dict[str, float], dict[str, SiteFit]]:
    """The penalty's factor for each measured site (by name) and the error-only fits it was measured with (fitted
    with `options` without the penalty: the penalised fits start from the same ones). Sites sharing one fit get
    one factor, from their summed change. Empty when fewer than two fits can be measured."""
    from amos_onnx.fit.sites import fit_sites

    fits = fit_sites(p.sites, p.reservoirs, replace(options, spike_penalty=0.0, penalty_weights={}))
    measured = measured_sites(p, fits)
    by_set, _ = focus.site_effects(p, measured, [fits], output_change)
    if not by_set:
        return {}, fits
    change = by_set[0]
    groups: dict[int, list[Site]] = {}
    for site in measured:
        groups.setdefault(id(fits[site.name]), []).append(site)
    sensitivity = {}
    for key, members in groups.items():
        relative = relative_error(members[0], fits[members[0].name], p)
        if relative > 0:
            sensitivity[key] = sum(change[s.name] for s in members) / relative
    weights = factors(sensitivity)
    return {s.name: weights[key] for key, members in groups.items() if key in weights for s in members}, fits


def relative_error(site: Site, fit_: SiteFit, p: Plan) -> float:
    """A fit's squared error on its site's samples over the activation's mean square there."""
    assert site.activation is not None
    values = np.asarray(p.reservoirs[site.samples].values, np.float64)
    power = float(np.mean(site.activation.func(values) ** 2))
    return fit_.mse / power if power > 0 else 0.0


def factors(sensitivity: dict[int, float]) -> dict[int, float]:
    """Geometric mean of the sensitivities over each one, within WEIGHT_LIMIT either way (a fit whose error
    moved nothing measured pays the most); none when fewer than two fits moved the outputs."""
    positive = [v for v in sensitivity.values() if v > 0 and math.isfinite(v)]
    if len(positive) < 2:
        return {}
    mean = math.exp(sum(math.log(v) for v in positive) / len(positive))
    return {key: min(WEIGHT_LIMIT, max(1 / WEIGHT_LIMIT, mean / v)) if v > 0 else WEIGHT_LIMIT
            for key, v in sensitivity.items() if math.isfinite(v)}


def penalty_notes(weights: dict[str, float] | None) -> list[str]:
    """What the spread by effect did: the factors' span over the measured sites."""
    if not weights:
        return []
    low, high = min(weights, key=weights.__getitem__), max(weights, key=weights.__getitem__)
    return [f"spike penalty spread by measured effect over {len(weights)} sites: factor {weights[low]:.2g} at {low} "
            f"(the outputs most sensitive to its error) to {weights[high]:.2g} at {high}"]
