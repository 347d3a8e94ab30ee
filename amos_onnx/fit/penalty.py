"""The spike penalty spread by measured effect (convert --penalty-by-effect): a site whose gate error the network
passes on to its outputs pays less per spike, one whose error it drowns pays more.

Spread by the share of gate evaluations alone (fit.sites._shares), one unit of relative squared error costs the
same at every site; the outputs disagree: the same relative error moved a Fashion-MNIST ResNet's softmax about 90
times more at its stem than at its last residual branch. So each site's sensitivity is measured: its error-only
gate alone in place (the focus's switched model, on the kept calibration samples), the outputs' change
(fit.change.output_change) over that gate's relative squared error on its samples. A fit's penalty is then scaled
by the sensitivities' geometric mean over its own (within WEIGHT_LIMIT either way), so that one spike buys about
the same change of the outputs wherever it is spent. The penalised gates are measured again: a gate whose error
has another shape than the error-only one's (a bias that pooling passes on) can move the outputs far more than
predicted, and is fitted again at the sensitivity it shows.
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
# A penalised gate that moves the outputs this many times more than its error-only gate's sensitivity predicts (a
# bias pooling passes on where the error-only gate's noise averaged out, say) is fitted again at its own sensitivity
RAISED = 2.0

Group = tuple[str, ...]  # the sites sharing one fit, by name


def measured_sites(p: Plan, fits: dict[str, SiteFit]) -> list[Site]:
    """The sites whose sensitivity is measured: converting, floating-point, top-level, calibrated fits."""
    return [s for s in p.sites if s.converts and not s.graph and s.dtype in MEASURED_TYPES and s.name in fits
            and fits[s.name].calibrated and s.samples in p.reservoirs]


def spread_fits(p: Plan, options: FitOptions) -> tuple[dict[str, SiteFit], dict[str, float]]:
    """Every site's fit with the penalty spread by effect, and the factors (by site name; none when fewer than two
    fits moved the outputs). The sensitivities are measured with the error-only fits (`options` without the
    penalty: the penalised fits start from them), then again with the penalised fits: where one moves the
    outputs RAISED times more than predicted, that sensitivity holds and the fit is made again."""
    from amos_onnx.fit.sites import fit_sites, fit_sites_at

    first = sensitivities(p, fit_sites(p.sites, p.reservoirs, replace(options, spike_penalty=0.0,
                                                                      penalty_weights={})))
    mean = geometric_mean(first)
    scale = {group: factor(mean, value) for group, value in first.items()} if mean is not None else {}
    fits = fit_sites(p.sites, p.reservoirs, replace(options, penalty_weights=by_name(scale)))
    if mean is None:
        return fits, {}
    later = sensitivities(p, fits)
    raised = [group for group in scale if later.get(group, 0.0) > RAISED * first[group]]
    if not raised:
        return fits, by_name(scale)
    scale.update({group: factor(mean, later[group]) for group in raised})
    again = replace(options, penalty_weights=by_name(scale))
    refits = fit_sites_at(p.sites, p.reservoirs, again, [options.k_per_site], [[n for g in raised for n in g]])[0]
    return {**fits, **refits}, by_name(scale)


def sensitivities(p: Plan, fits: dict[str, SiteFit]) -> dict[Group, float]:
    """Each measured fit's sensitivity: the outputs' change (fit.change.output_change, on the kept calibration
    samples) with its gate alone in place, summed over the sites sharing it, over its relative squared error; fits
    with no error are left out."""
    measured = measured_sites(p, fits)
    by_set, _ = focus.site_effects(p, measured, [fits], output_change)
    if not by_set:
        return {}
    groups: dict[int, list[Site]] = {}
    for site in measured:
        groups.setdefault(id(fits[site.name]), []).append(site)
    found = {}
    for members in groups.values():
        relative = relative_error(members[0], fits[members[0].name], p)
        if relative > 0:
            found[tuple(s.name for s in members)] = sum(by_set[0][s.name] for s in members) / relative
    return found


def by_name(scale: dict[Group, float]) -> dict[str, float]:
    return {name: value for group, value in scale.items() for name in group}


def relative_error(site: Site, fit_: SiteFit, p: Plan) -> float:
    """A fit's squared error on its site's samples over the activation's mean square there."""
    assert site.activation is not None
    values = np.asarray(p.reservoirs[site.samples].values, np.float64)
    power = float(np.mean(site.activation.func(values) ** 2))
    return fit_.mse / power if power > 0 else 0.0


def geometric_mean(sensitivity: dict[Group, float]) -> float | None:
    """The sensitivities' geometric mean over the fits that moved the outputs; None for fewer than two."""
    positive = [v for v in sensitivity.values() if v > 0 and math.isfinite(v)]
    if len(positive) < 2:
        return None
    return math.exp(sum(math.log(v) for v in positive) / len(positive))


def factor(mean: float, sensitivity: float) -> float:
    """A fit's factor: the mean over its sensitivity, within WEIGHT_LIMIT either way (a fit whose error moved
    nothing measured pays the most)."""
    if not sensitivity > 0:
        return WEIGHT_LIMIT
    return min(WEIGHT_LIMIT, max(1 / WEIGHT_LIMIT, mean / sensitivity))


def penalty_notes(weights: dict[str, float] | None) -> list[str]:
    """What the spread by effect did: the factors' span over the measured sites."""
    if not weights:
        return []
    low, high = min(weights, key=weights.__getitem__), max(weights, key=weights.__getitem__)
    return [f"spike penalty spread by measured effect over {len(weights)} sites: factor {weights[low]:.2g} at {low} "
            f"(the outputs most sensitive to its error) to {weights[high]:.2g} at {high}"]
