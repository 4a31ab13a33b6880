"""Warnings read off a fit's draws: posterior mass piled up at a bound of the
estimator's training domain (the data want values it was not trained on, or fast
guesses pull a shift parameter down)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from sbi_plugins.contract import Simulator
from sbi_plugins.data import PreparedData
from sbi_plugins.errors import DomainWarning
from sbi_plugins.model.model import HierarchicalModel

EDGE_FRACTION = 0.01
"""Draws within this fraction of the box width from a bound count as 'at the edge',
and a unit whose share of such draws exceeds it is warned about."""


def fast_guess_hints(
    simulator: Simulator, sampler_warned: bool = False
) -> dict[tuple[str, str], str]:
    """What a shift parameter at its lower bound usually means: fast guesses. A
    shift held down by one row fights the other rows, so the chains mix badly:
    when the sampler warned too, say which to fix first."""
    first = (
        ". Fix this first: it is the likely cause of the sampler's warnings below"
        if sampler_warned
        else ""
    )
    return {
        (obs.shift, "lower"): (
            f"rows with a very small {obs.name!r} (fast guesses) pull "
            f"{obs.shift!r} down: add a lapse component (p_outlier=0.05, "
            f"--p-outlier 0.05) or drop those rows{first}"
        )
        for obs in simulator.observables
        if obs.shift is not None
    }


def warn_at_domain_edges(
    model: HierarchicalModel,
    raw: Mapping[str, np.ndarray],
    theta: np.ndarray,
    data: PreparedData,
    hints: Mapping[tuple[str, str], str] | None = None,
) -> list[str]:
    """Warn when more than 1% of a parameter's draws sit within 1% of the box width
    of a bound, per group (pooled parameters) or per cell (formulas): the data want
    values the estimator was not trained on, unless `hints` (per parameter and
    side) know the likelier cause. `theta` is `(chain, draw, cell, parameter)`."""
    cell_labels = np.array(
        [f"row {data.row_labels[r]}'s cell" for r in model.cells.rows]
    )
    messages = []
    for j, parameter in enumerate(model.parameters):
        p = parameter.parameter
        values, labels = parameter.edge_values(
            raw, theta[..., j], data.group_labels, cell_labels
        )
        margin = EDGE_FRACTION * p.width
        for side, near in (
            ("lower", values <= p.lower + margin),
            ("upper", values >= p.upper - margin),
        ):
            share = near.mean(axis=0)
            crowded = np.flatnonzero(share > EDGE_FRACTION)
            if not len(crowded):
                continue
            where = ", ".join(f"{labels[i]} ({share[i]:.0%})" for i in crowded[:5])
            bound = p.lower if side == "lower" else p.upper
            advice = (hints or {}).get((p.name, side)) or (
                "the data want values the estimator was not trained on. Retrain on "
                "a wider domain, or check the data and the model"
            )
            message = (
                f"posterior draws of {p.name!r} pile up at the {side} bound {bound:g} "
                f"of the training domain [{p.lower:g}, {p.upper:g}] for {where}: "
                + advice
            )
            warnings.warn(message, DomainWarning, stacklevel=3)
            messages.append(message)
    return messages
