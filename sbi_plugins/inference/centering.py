"""Centered or non-centered, per population, from the data.

A non-centered population (group value = the population's quantile at a
standard-normal offset) avoids the funnel where a small spread squeezes every
group's value, and is what a group with little data needs. But where each group's
data pin its value down, the offsets must move with the population's mean and
spread in a curved valley, and NUTS takes long trajectories through it; the
centered form (group values sampled directly) is then the easy one. Measured on
`angle`, 10 subjects x 100 trials, `v` and `a` by subject: 52 leapfrog steps per
draw non-centered against 15 centered, a quarter of the time for more effective
draws; on the DDM with every parameter by subject, the centered `z` and `t`
populations diverge (docs/ddm.md).

So `noncentered="auto"` (`--auto-centering`) asks the posterior's mode. The curvature of
a group's offset there is 1 from its prior plus (sigma / s)^2 from its data, where
s is the sd the group's data alone leave its value. Each population whose median
curvature exceeds `DATA_DOMINATES` (the spread is about 5 times what each group's
data leave uncertain) is pinned down by the data, its funnel far from the
posterior's mass, and is sampled centered (Betancourt and Girolami 2015's rule,
with a margin); the others stay non-centered. A mix starts at the mode found with
every population non-centered (`sbi_plugins.inference.laplace`): on the DDM with
every parameter by subject (`v` and `a` centered, `z` and `t` not) it took 29.4
leapfrog steps per draw against 51.9 all non-centered, with more effective draws
(docs/ddm.md). Before the mix had that start it was slower than either form, and
the choice was all or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sbi_plugins.inference.laplace import offset_precision
from sbi_plugins.model.pooling import ParameterPlan

DATA_DOMINATES = 25.0
"""The curvature of a population's offsets at the mode above which it counts as
pinned down by the data: sigma / s above 4.9. Measured on 10 x 100, all
populations of a fit in one form
(2 cores; the ssm cases with the mass matrix "auto" gives each form, dense
centered and diagonal non-centered): centered was worse for the DDM with every
parameter by subject (smallest curvature 10.9, `t`; 22.5 for `z`: it diverges),
and better for the `v` of `ddm_sdv` (31.4: 5.9 times the min ESS per second;
47.9 on other data: 5.6), the `a` of `race_no_bias_3` (32.2: 1.6 times) and the
`v` of `angle` (52.9: 4 times). Nothing was measured between 10.9 and 31.4."""


PINNED_ALONE = 60.0
"""The curvature above which a population is centered beside non-centered ones.
Higher than `DATA_DOMINATES`: a population centered alone starts from the
non-centered mode with diagonal scales, not the dense matrix that all-centered
fits adapt. On the DDM with every parameter by subject (10 x 100), `z` centered
at 30.7 beside a non-centered `t` diverged 138 times in 4,000 draws, `v` and `a`
centered at 91-149 did not (docs/ddm.md)."""


def choose_centering(
    parameters: list[Any],
    build: Callable[[list[Any]], tuple[Any, dict[str, Any]]],
) -> tuple[list[Any], dict[str, float]]:
    """`parameters` with each non-centered population made centered where the
    data dominate it, and the offsets' curvatures the choice was made on
    (empty where no population is non-centered, the model has a formula or no
    usable mode: then nothing changes). `build(parameters)` gives the model and
    its keyword arguments."""
    offsets = {
        p.offset_site: p.name
        for p in parameters
        if isinstance(p, ParameterPlan) and p.noncentered
    }
    if not offsets or not all(isinstance(p, ParameterPlan) for p in parameters):
        # a formula model needs its Laplace start, which a centered population
        # beside it would take away (sbi_plugins.inference.nuts_method)
        return parameters, {}
    model, kwargs = build(parameters)
    found = offset_precision(model, kwargs, list(offsets), init=model.start())
    if not found:
        return parameters, {}
    curvature = {offsets[site]: value for site, value in found.items()}
    if len(curvature) == len(offsets) and min(curvature.values()) > DATA_DOMINATES:
        pinned = set(curvature)
    else:
        pinned = {name for name, value in curvature.items() if value > PINNED_ALONE}
    return [
        dataclasses.replace(p, centered=True) if p.name in pinned else p
        for p in parameters
    ], curvature


def population_forms(
    parameters: list[Any], curvature: dict[str, float]
) -> dict[str, str]:
    """What attrs record: each normal population's form, with the offset's
    curvature where "auto" chose it ("centered (data 6.3x the prior)")."""
    forms = {}
    for p in parameters:
        if not (isinstance(p, ParameterPlan) and p.pooling == "partial"):
            continue
        if p.family.name != "normal":
            continue
        form = "non-centered" if p.noncentered else "centered"
        if p.name in curvature:
            form += f" (offset curvature {curvature[p.name]:.3g} at the mode)"
        forms[p.name] = form
    return forms
