"""Pooling spec and population priors -> a Pyro model with plates.

Per parameter:
- "complete": one value shared by all groups, prior = the `mu` hyperprior truncated
  to the training box;
- "none": one independent value per group, each with that same prior;
- "partial": `<p>_mu`, `<p>_sigma` ~ hyperpriors, and each group's value ~ the
  family(mu, sigma) truncated to the box and renormalized.
Every group-level value therefore lives in the training box by construction: NUTS
samples it through the interval's sigmoid transform.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyro
import torch

from sbi_plugins.contract import Parameter, PopulationPrior, PriorFamily, Simulator
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.inference.starts import start_value
from sbi_plugins.likelihoods.lapse import SITE as LAPSE_SITE
from sbi_plugins.likelihoods.lapse import Lapse, with_lapses
from sbi_plugins.model.distributions import SampledBelow, TruncatedToBox, as_pyro
from sbi_plugins.plugin.registry import get_registry

if TYPE_CHECKING:
    from sbi_plugins.likelihoods.distribution import Likelihood

POOLING_MODES = ("complete", "none", "partial")
DEFAULT_FAMILY = "normal"


@dataclass(frozen=True)
class ParameterPlan:
    """How one parameter enters the model."""

    parameter: Parameter
    pooling: str
    prior: PopulationPrior
    family: PriorFamily

    @property
    def name(self) -> str:
        return self.parameter.name

    @property
    def hyper_names(self) -> list[str]:
        if self.pooling != "partial":
            return []
        return [f"{self.name}_{h}" for h in self.family.hyperparameters]

    @property
    def grouped(self) -> bool:
        return self.pooling != "complete"

    def describe(self) -> str:
        box = f"in [{self.parameter.lower:g}, {self.parameter.upper:g}]"
        if self.pooling == "partial":
            return f"{self.name} ~ {self.prior.describe()} {box}"
        mu = self.prior.hyperpriors["mu"]
        return f"{self.name} ~ {type(mu).__name__} (the mu hyperprior) {box}"


def normalize_pooling(
    pooling: str | Mapping[str, str], simulator: Simulator, has_groups: bool
) -> dict[str, str]:
    """A pooling mode per parameter; a dict may omit parameters (they get partial)."""
    names = simulator.parameter_names
    if isinstance(pooling, str):
        spec = dict.fromkeys(names, pooling)
    else:
        unknown = set(pooling) - set(names)
        if unknown:
            raise SbiPluginsError(
                f"pooling names unknown parameters {', '.join(sorted(unknown))}; "
                f"{simulator.name} has {', '.join(names)}"
            )
        spec = {n: pooling.get(n, "partial") for n in names}
    for name, mode in spec.items():
        if mode not in POOLING_MODES:
            which = "" if isinstance(pooling, str) else f" for {name!r}"
            raise SbiPluginsError(
                f"pooling {mode!r}{which} is not one of {', '.join(POOLING_MODES)}"
            )
    if not has_groups and any(m != "complete" for m in spec.values()):
        raise SbiPluginsError(
            "pooling 'none' and 'partial' need groups: pass group=<column> "
            "(--group COL), or pooling='complete'"
        )
    return spec


def plan_parameters(
    simulator: Simulator,
    pooling: Mapping[str, str],
    priors: Mapping[str, PopulationPrior | str] | None = None,
) -> list[ParameterPlan]:
    """Choose each parameter's prior: the user's, else the plugin's default, else
    the normal family with hyperpriors scaled to the training box."""
    priors = dict(priors or {})
    unknown = set(priors) - set(simulator.parameter_names)
    if unknown:
        raise SbiPluginsError(
            f"priors name unknown parameters {', '.join(sorted(unknown))}; "
            f"{simulator.name} has {', '.join(simulator.parameter_names)}"
        )
    registry = get_registry()
    plans = []
    for parameter in simulator.parameters:
        prior = priors.get(
            parameter.name, simulator.population_priors.get(parameter.name)
        )
        if prior is None:
            prior = registry.prior_family(DEFAULT_FAMILY).prior_for(parameter)
        elif isinstance(prior, str):
            prior = registry.prior_family(prior).prior_for(parameter)
        family = registry.prior_family(prior.family)
        missing = set(family.hyperparameters) - set(prior.hyperpriors)
        if missing:
            raise SbiPluginsError(
                f"prior of {parameter.name!r} lacks hyperpriors for "
                f"{', '.join(sorted(missing))} (family {family.name!r} needs "
                f"{', '.join(family.hyperparameters)})"
            )
        plans.append(ParameterPlan(parameter, pooling[parameter.name], prior, family))
    return plans


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


def describe_plans(plans: list[ParameterPlan]) -> str:
    """JSON of pooling and priors, for InferenceData attrs."""
    return json.dumps(
        {p.name: {"pooling": p.pooling, "prior": p.describe()} for p in plans}
    )


class HierarchicalModel:
    """The Pyro model: group-level parameters in plates, then the likelihood over
    data rows in a plate of its own."""

    def __init__(
        self,
        plans: list[ParameterPlan],
        num_groups: int,
        group_dim: str,
        lapse: Lapse | None = None,
        ceilings: Mapping[str, np.ndarray] | None = None,
    ):
        self.plans = plans
        self.num_groups = num_groups
        self.group_dim = group_dim
        self.lapse = lapse
        self.ceilings = {
            k: torch.as_tensor(v, dtype=torch.float64)
            for k, v in (ceilings or {}).items()
        }
        """Per shift parameter, each group's fastest observation: the posterior has
        no mass above it (see `SampledBelow`); not used with lapses."""

    def truncated(
        self, plan: ParameterPlan, base: torch.distributions.Distribution
    ) -> TruncatedToBox:
        """`base` restricted to the plan's training box and renormalized."""
        p = plan.parameter
        low = torch.tensor(p.lower, dtype=torch.float64)
        return TruncatedToBox(base, low, torch.tensor(p.upper, dtype=torch.float64))

    def _below_ceiling(
        self, plan: ParameterPlan, prior: TruncatedToBox
    ) -> TruncatedToBox | SampledBelow:
        """The prior, sampled only below the data's ceiling where it has one."""
        ceiling = self.ceilings.get(plan.name)
        if ceiling is None:
            return prior
        return SampledBelow(prior, ceiling if plan.grouped else ceiling.min())

    def _sample_plan(self, plan: ParameterPlan, groups: pyro.plate) -> torch.Tensor:
        if plan.pooling == "partial":
            hyper = {
                h: pyro.sample(f"{plan.name}_{h}", as_pyro(plan.prior.hyperpriors[h]))
                for h in plan.family.hyperparameters
            }
            population = self.truncated(plan, plan.family.build(**hyper))
            with groups:
                return pyro.sample(plan.name, self._below_ceiling(plan, population))
        prior = self._below_ceiling(
            plan, self.truncated(plan, plan.prior.hyperpriors["mu"])
        )
        if plan.pooling == "none":
            with groups:
                return pyro.sample(plan.name, prior)
        value = pyro.sample(plan.name, prior)
        return value.expand(self.num_groups)

    def group_parameters(self) -> torch.Tensor:
        """Sample every parameter; return the `(groups, parameters)` matrix."""
        groups = pyro.plate(self.group_dim, self.num_groups, dim=-1)
        columns = [self._sample_plan(plan, groups) for plan in self.plans]
        return torch.stack(columns, dim=-1)

    def __call__(
        self,
        x: torch.Tensor,
        group_index: torch.Tensor,
        likelihood: Likelihood,
        site: str,
    ) -> None:
        theta = self.group_parameters()
        rows = with_lapses(likelihood.rows(theta, group_index), self.lapse)
        with pyro.plate("__obs__", x.shape[0], dim=-1):
            pyro.sample(site, rows, obs=x)

    def start(self, ceilings: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Constrained starting values of every site (see
        `sbi_plugins.inference.starts`): typical values, shift parameters below their groups' ceilings, population
        means and spreads from the group values."""
        values: dict[str, torch.Tensor] = {}
        for plan in self.plans:
            p = plan.parameter
            center = typical_value(p, plan.prior)
            ceiling = np.asarray(ceilings.get(p.name, np.inf), dtype=float)
            if plan.grouped:
                ceiling = np.broadcast_to(ceiling, (self.num_groups,))
                group = [start_value(center, p.lower, p.upper, c) for c in ceiling]
            else:
                group = [start_value(center, p.lower, p.upper, ceiling.min())]
            values[plan.name] = torch.tensor(
                group if plan.grouped else group[0], dtype=torch.float64
            )
            for h in plan.family.hyperparameters if plan.pooling == "partial" else ():
                guess = {
                    "mu": float(np.mean(group)),
                    "sigma": max(float(np.std(group)), 0.1 * p.width),
                }.get(h)
                hyperprior = plan.prior.hyperpriors[h]
                value = None if guess is None else torch.tensor(guess).double()
                if value is None or not bool(hyperprior.support.check(value)):
                    value = _median(hyperprior)
                values[f"{plan.name}_{h}"] = value
        if self.lapse is not None and self.lapse.prior is not None:
            values[LAPSE_SITE] = self.lapse.start_share()
        return values


def _median(distribution: torch.distributions.Distribution) -> torch.Tensor:
    """A robust central value of any distribution: the median of 1001 draws."""
    generator_state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        draws = distribution.sample((1001,))
    finally:
        torch.set_rng_state(generator_state)
    return draws.median(0).values.double()
