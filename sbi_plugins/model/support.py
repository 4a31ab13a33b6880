"""Where the model has support on these data, and where sampling starts inside it.

A reaction time has zero density below its non-decision time, so a shift parameter
(`Observable.shift`, the DDM's `t`) must stay below each group's fastest observation.
These rules belong to the model: its shift parameters are sampled below those
ceilings (see `SampledBelow`), its typical values and ceilings give the start from
the data (`HierarchicalModel.start`), and rows no value in the box explains are
refused before anything is trained. An onset that trials may precede (a model
with onset variability `st`: `Observable.start_below`) only starts below those
ceilings: sampling may take it above them.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from sbi_plugins.contract import Parameter, PopulationPrior, Simulator
from sbi_plugins.errors import DataError, describe_rows

SHIFT_FRACTION = 0.5
"""A shift parameter starts this far from its lower bound towards its ceiling."""
LAPSE_QUANTILE = 0.05
"""With lapses, a group's ceiling is this quantile of its values, not the minimum."""


def shift_ceilings(
    simulator: Simulator,
    x: np.ndarray,
    index: np.ndarray,
    num_groups: int,
    lapses: bool,
    start: bool = False,
) -> dict[str, np.ndarray]:
    """Per shift parameter, per group: the value it must stay below (the group's
    smallest observation, or a low quantile of them when lapses explain the rest).
    Groups without rows get +inf. With `start`, the ceilings the start keeps: the
    `start_below` parameters' too."""
    out: dict[str, np.ndarray] = {}
    for j, obs in enumerate(simulator.observables):
        onset = obs.onset(start)
        if onset is None:
            continue
        ceiling = np.full(num_groups, np.inf)
        for g in range(num_groups):
            values = x[index == g, j]
            if len(values):
                ceiling[g] = (
                    np.quantile(values, LAPSE_QUANTILE) if lapses else values.min()
                )
        previous = out.get(onset)
        out[onset] = ceiling if previous is None else np.minimum(previous, ceiling)
    return out


def check_explainable(
    simulator: Simulator,
    x: np.ndarray,
    labels: np.ndarray | None,
    lapses: bool,
) -> None:
    """Refuse rows that no parameter in the box can explain (a value at or below
    the lowest shift the estimator knows), before any estimator is trained."""
    if lapses:
        return
    bounds = {p.name: p for p in simulator.parameters}
    for j, obs in enumerate(simulator.observables):
        if obs.shift is None:
            continue
        parameter = bounds[obs.shift]
        bad = x[:, j] <= parameter.lower
        if bad.any():
            raise DataError(
                f"column {obs.name!r} is at or below {parameter.lower:g}, the "
                f"smallest {parameter.name!r} the model allows, at "
                f"{describe_rows(bad, labels)}: no parameter value can produce "
                "them. Fast guesses like these need a lapse component: "
                "p_outlier=0.05 (--p-outlier 0.05), or drop the rows"
            )


def start_value(
    center: float, lower: float, upper: float, ceiling: float = np.inf
) -> float:
    """`center` kept strictly inside the box and, for a shift, below the ceiling."""
    margin = 1e-3 * (upper - lower)
    value = min(max(center, lower + margin), upper - margin)
    if np.isfinite(ceiling):
        value = min(value, lower + SHIFT_FRACTION * (ceiling - lower))
    return max(value, lower + margin * 1e-3)


def typical_value(parameter: Parameter, prior: PopulationPrior | None) -> float:
    """The plugin's typical value of a parameter (the mean of its population `mu`
    hyperprior), else the box's midpoint; kept 5% of the width inside the box."""
    center = 0.5 * (parameter.lower + parameter.upper)
    if prior is not None and "mu" in prior.hyperpriors:
        with contextlib.suppress(NotImplementedError, TypeError, ValueError):
            center = float(prior.hyperpriors["mu"].mean)
    if not math.isfinite(center):
        center = 0.5 * (parameter.lower + parameter.upper)
    margin = 0.05 * parameter.width
    return min(max(center, parameter.lower + margin), parameter.upper - margin)
