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
from sbi_plugins.estimators import reduction
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
    return {
        (obs.shift, "lower"): (
            f"rows with a very small {obs.name!r} (fast guesses) pull "
            f"{obs.shift!r} down: {fast_guess_remedy(sampler_warned)}"
        )
        for obs in simulator.observables
        if obs.shift is not None
    }


def fast_guess_remedy(sampler_warned: bool) -> str:
    first = (
        ". Fix this first: it is the likely cause of the sampler's warnings below"
        if sampler_warned
        else ""
    )
    return (
        "add a lapse component (p_outlier=0.05, --p-outlier 0.05) or drop those "
        f"rows{first}"
    )


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
            if len(labels) == len(data.group_labels) and parameter.grouped:
                where = f"{data.group_dim} {where} (the share of draws)"
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


FAST_GUESS_SHARE = 0.2
"""A row left less than this share of the time after its cell's shift parameter
(posterior mean) that the cell's 4th-fastest row is left is held against the
shift. Clean DDM fits measured 0.53-0.83 for their fastest row (640-1,600 rows,
pooled or 160 per subject); fits with a guess at 0.05 s 0.009."""
FAST_GUESS_RANK = 3
"""The cell's row (0 = fastest) the others are measured against: up to three
guesses in one cell are still seen as such."""


FAST_BEFORE_FITTING = 0.3
"""Before a fit, a row faster than this share of its group's 4th-fastest looks
like a guess. On clean simulated data the fastest row was at least 0.36 of it
(the DDM, 200 groups of 20 and 100 trials, `t` down to 0) and 0.62 (the shipped
ssm models, 50 groups each); a guess at 0.114 s beside a 4th-fastest of 0.42 s
is at 0.27."""


def far_faster(
    values: np.ndarray, group_index: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows under `share` of their group's 4th-smallest value (`FAST_GUESS_RANK`),
    and that value per row (NaN in groups too small to tell)."""
    fast = np.zeros(len(values), dtype=bool)
    reference = np.full(len(values), np.nan)
    for group in np.unique(group_index):
        rows = (group_index == group) & np.isfinite(values)
        if rows.sum() <= FAST_GUESS_RANK:
            continue
        reference[rows] = np.sort(values[rows])[FAST_GUESS_RANK]
        fast |= rows & (values < share * reference)
    return fast, reference


def warn_of_fast_rows(simulator: Simulator, data: PreparedData) -> list[str]:
    """Before sampling, where no lapse component is fitted: rows far faster than
    the rest of their group look like fast guesses, which hold what the value
    exceeds (the shift parameter, or a sum such as `t - st`) below them. Said
    first, not after a fit's whole run."""
    messages = []
    names = simulator.parameter_names
    for k, obs in enumerate(simulator.observables):
        floor = reduction.observable_floor(obs, names)
        if floor is None:
            continue
        held = repr(obs.shift) if obs.shift else reduction.floor_text(floor, names)
        values = data.x[:, k]
        fast, reference = far_faster(values, data.group_index, FAST_BEFORE_FITTING)
        if not fast.any():
            continue
        rows = np.flatnonzero(fast)
        shown = ", ".join(
            f"{data.row_labels[r]} ({obs.name} {values[r]:.3g}, its group's "
            f"4th-fastest {reference[r]:.3g})"
            for r in rows[:3]
        )
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        message = (
            f"{'row' if len(rows) == 1 else 'rows'} {shown}{more} "
            f"{'is' if len(rows) == 1 else 'are'} far faster than the rest of "
            f"{'its' if len(rows) == 1 else 'their'} group: if fast guesses, they "
            f"will hold {held} below them and bias the fit. Fit with a lapse "
            "component (p_outlier=0.05, --p-outlier 0.05), or drop them"
        )
        warnings.warn(message, DomainWarning, stacklevel=3)
        messages.append(message)
    return messages


def warn_of_fast_guesses(
    simulator: Simulator,
    model: HierarchicalModel,
    theta: np.ndarray,
    data: PreparedData,
    sampler_warned: bool = False,
) -> list[str]:
    """A shift parameter (`t`) can never pass a row's time, so a fast guess holds
    it, and the fit with it, below where the other rows put it, often without
    reaching the domain's bound: rows far faster than the rest of their cell,
    after the shift's posterior mean, are named with the remedy. `theta` is
    `(chain, draw, cell, parameter)`."""
    names = [p.name for p in model.parameters]
    messages = []
    for k, obs in enumerate(simulator.observables):
        if obs.shift is None or obs.shift not in names:
            continue
        shift = theta[..., names.index(obs.shift)].mean(axis=(0, 1))
        after = data.x[:, k] - shift[data.group_index]
        held, reference = far_faster(after, data.group_index, FAST_GUESS_SHARE)
        if not held.any():
            continue
        rows = np.flatnonzero(held)
        shown = ", ".join(
            f"{data.row_labels[r]} ({obs.name} {data.x[r, k]:.3g}, "
            f"{obs.shift} {shift[data.group_index[r]]:.3g}, its group's 4th-fastest "
            f"{obs.name} {reference[r] + shift[data.group_index[r]]:.3g})"
            for r in rows[:3]
        )
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        message = (
            f"{obs.shift!r} is held below {'row' if len(rows) == 1 else 'rows'} "
            f"{shown}{more}, far faster than the rest of their group: fast guesses "
            f"pull {obs.shift!r} down and bias the fit; "
            + fast_guess_remedy(sampler_warned)
        )
        warnings.warn(message, DomainWarning, stacklevel=3)
        messages.append(message)
    return messages
