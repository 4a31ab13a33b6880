"""Where NUTS starts: inside the support of every configuration, by construction.

Pyro's default start draws every value at random in (-2, 2) on the unconstrained
scale. A reaction time has zero density below its non-decision time, so once `t`
varies by subject a random start puts some subject's `t` above its fastest RT, and
after 100 such tries Pyro gives up ("cannot find valid initial params"). So the start
is built from the data instead: every parameter at its typical value (the mean of
its `mu` hyperprior, inside the box), except a shift parameter (`Observable.shift`),
which starts halfway between its lower bound and the smallest value of its
observable in each group (with lapses, a low quantile: a fast guess is the lapse's
to explain). Chains start from this point jittered on the unconstrained scale, each
jitter kept only where the log density stays finite.

Where even that start has zero density, the rows responsible are named in one line
(`StartError`), never Pyro's traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import DataError, describe_rows
from sbi_plugins.likelihoods.distribution import Likelihood

SHIFT_FRACTION = 0.5
"""A shift parameter starts this far from its lower bound towards its ceiling."""
LAPSE_QUANTILE = 0.05
"""With lapses, a group's ceiling is this quantile of its values, not the minimum."""
JITTER = (0.3, 0.1, 0.0)
"""Per-chain jitter sds on the unconstrained scale, tried in turn."""


class StartError(DataError):
    """No valid starting point: the message names the parameter, group and rows."""


def shift_ceilings(
    simulator: Simulator,
    x: np.ndarray,
    index: np.ndarray,
    num_groups: int,
    lapses: bool,
) -> dict[str, np.ndarray]:
    """Per shift parameter, per group: the value it must stay below (the group's
    smallest observation, or a low quantile of them when lapses explain the rest).
    Groups without rows get +inf."""
    out: dict[str, np.ndarray] = {}
    for j, obs in enumerate(simulator.observables):
        if obs.shift is None:
            continue
        ceiling = np.full(num_groups, np.inf)
        for g in range(num_groups):
            values = x[index == g, j]
            if len(values):
                ceiling[g] = (
                    np.quantile(values, LAPSE_QUANTILE) if lapses else values.min()
                )
        previous = out.get(obs.shift)
        out[obs.shift] = ceiling if previous is None else np.minimum(previous, ceiling)
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


@dataclass
class StartProblem:
    """What `chain_starts` needs to say which rows stop a start."""

    likelihood: Likelihood
    theta: Callable[[Mapping[str, Tensor]], Tensor]  # start -> (groups, params)
    index: np.ndarray
    x: np.ndarray
    row_labels: np.ndarray
    group_labels: np.ndarray
    group_name: str


def log_density(model: Callable[..., None], kwargs: Mapping[str, Any], values) -> float:
    """The model's log joint density at constrained `values`."""
    trace = poutine.trace(poutine.condition(model, data=dict(values))).get_trace(
        **kwargs
    )
    with torch.no_grad():
        return float(trace.log_prob_sum())


def explain_failure(problem: StartProblem, start: Mapping[str, Tensor]) -> str:
    """One line: which rows (and groups) have zero likelihood at the start."""
    with torch.no_grad():
        theta = problem.theta(start).double()
        lp = problem.likelihood.log_prob_grouped(
            theta,
            torch.as_tensor(problem.index),
            torch.as_tensor(problem.x, dtype=torch.float64),
        ).numpy()
    bad = ~np.isfinite(lp)
    if not bad.any():
        return (
            "cannot start sampling: the priors have zero density at the starting "
            "values; check the priors given to fit()"
        )
    groups = np.unique(problem.index[bad])
    names = problem.likelihood.simulator.parameter_names
    first = theta[groups[0]].tolist()
    at = ", ".join(f"{n}={v:.3g}" for n, v in zip(names, first, strict=True))
    where = ", ".join(str(problem.group_labels[g]) for g in groups[:5])
    return (
        "cannot start sampling: the likelihood is zero at "
        f"{describe_rows(bad, problem.row_labels)} ({problem.group_name} {where}) at "
        f"the starting values (e.g. {at}). Check those rows, or add a lapse "
        "component for trials the model cannot produce: p_outlier=0.05 "
        "(--p-outlier 0.05)"
    )


def chain_starts(
    model: Callable[..., None],
    model_kwargs: Mapping[str, Any],
    start: Mapping[str, Tensor],
    chains: int,
    seed: int,
    problem: StartProblem,
) -> list[dict[str, Tensor]]:
    """Per chain, `start` jittered on the unconstrained scale (constrained values,
    for `init_to_value`); a `StartError` naming the rows where `start` itself has
    zero density."""
    if not np.isfinite(log_density(model, model_kwargs, start)):
        raise StartError(explain_failure(problem, start))
    rng_state = torch.get_rng_state()
    try:
        _, potential_fn, transforms, _ = initialize_model(
            model,
            model_kwargs=dict(model_kwargs),
            init_strategy=init_to_value(values=dict(start)),
        )
    finally:
        torch.set_rng_state(rng_state)
    unconstrained = {k: transforms[k](v) for k, v in start.items() if k in transforms}
    generator = torch.Generator().manual_seed(seed)
    starts = []
    for _ in range(chains):
        for scale in JITTER:
            z = {
                k: v + scale * torch.randn(v.shape, generator=generator, dtype=v.dtype)
                for k, v in unconstrained.items()
            }
            with torch.no_grad():
                if torch.isfinite(potential_fn(z)):
                    break
        starts.append(
            {k: transforms[k].inv(v).detach() for k, v in z.items()}
            | {k: v for k, v in start.items() if k not in transforms}
        )
    return starts
