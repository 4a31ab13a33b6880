"""Where NUTS's chains start: inside the support of every configuration.

Pyro's default start draws every value at random in (-2, 2) on the unconstrained
scale. A reaction time has zero density below its non-decision time, so once `t`
varies by subject a random start puts some subject's `t` above its fastest RT, and
after 100 such tries Pyro gives up ("cannot find valid initial params"). So the start
is built from the data instead: every parameter at its typical value (the mean of
its `mu` hyperprior, inside the box), except a shift parameter (`Observable.shift`,
or `Observable.start_below` for an onset that trials may precede), which starts
halfway between its lower bound and the smallest value of its observable in each
group (with lapses, a low quantile: a fast guess is the lapse's to explain); see
`sbi_plugins.model.support` and `HierarchicalModel.start`. Chains start from this
point jittered on the unconstrained scale, each jitter kept only where the log
density stays finite.

Where even that start has zero density, the rows responsible are named in one line
(`StartError`), never Pyro's traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor

from sbi_plugins.data import PreparedData
from sbi_plugins.errors import DataError, describe_rows
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.omission import Omissions

if TYPE_CHECKING:
    from sbi_plugins.model.model import HierarchicalModel

JITTER = (0.3, 0.1, 0.0)
"""Per-chain jitter sds on the unconstrained scale, tried in turn."""


class StartError(DataError):
    """No valid starting point: the message names the parameter, group and rows."""


@dataclass
class StartProblem:
    """What `chain_starts` needs to say which rows stop a start."""

    likelihood: Likelihood
    theta: Callable[[Mapping[str, Tensor]], Tensor]  # start -> (cells, params)
    index: np.ndarray
    x: np.ndarray
    row_labels: np.ndarray
    group_labels: np.ndarray
    group_name: str
    omissions: Omissions | None = None


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
            problem.omissions,
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


def start_problem(
    model: HierarchicalModel, model_kwargs: Mapping[str, Any], data: PreparedData
) -> StartProblem:
    """What names the rows (and groups or cells) where the model cannot start."""
    cells = model.cells
    return StartProblem(
        model_kwargs["likelihood"],
        lambda start: model.cell_parameters(model.with_derived(start)),
        cells.index,
        data.x,
        data.row_labels,
        cells.labels,
        cells.name,
        model.omissions,
    )
