"""Pooling per parameter: one value for all groups, one per group, or a population.

Per parameter:
- "complete": one value shared by all groups, prior = the `mu` hyperprior truncated
  to the training box;
- "none": one independent value per group, each with that same prior;
- "partial": `<p>_mu`, `<p>_sigma` ~ hyperpriors, and each group's value ~ the
  family(mu, sigma) truncated to the box and renormalized.
Every group-level value therefore lives in the training box by construction: NUTS
samples it through the interval's sigmoid transform. A parameter's prior depends on
its own mode and prior only, never on what the other parameters are given.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_plugins.contract import Parameter, PopulationPrior, PriorFamily, Simulator
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.model.distributions import SampledBelow, TruncatedToBox, as_pyro
from sbi_plugins.model.sites import Sites
from sbi_plugins.model.support import start_value, typical_value
from sbi_plugins.plugin.registry import get_registry

POOLING_MODES = ("complete", "none", "partial")
DEFAULT_FAMILY = "normal"


def unchecked(distribution: Distribution) -> Distribution:
    """A copy that skips validating its values: the checks branch on tensor values,
    which a compiled graph cannot hold, and NUTS's values are in the support by
    construction (the transforms map onto it)."""
    quiet = copy.copy(distribution)
    quiet._validate_args = False
    return quiet


@dataclass(frozen=True)
class ParameterPlan:
    """How one pooled parameter enters the model: its mode, prior and family."""

    parameter: Parameter
    pooling: str
    prior: PopulationPrior
    family: PriorFamily

    @classmethod
    def of(
        cls, parameter: Parameter, pooling: str, prior: PopulationPrior
    ) -> ParameterPlan:
        """The plan of `parameter` in mode `pooling` with its resolved `prior`."""
        return cls(parameter, pooling, prior, get_registry().prior_family(prior.family))

    @property
    def name(self) -> str:
        return self.parameter.name

    def hyper_site(self, hyperparameter: str) -> str:
        """The site of one of its population's hyperparameters (`v_mu`)."""
        return f"{self.name}_{hyperparameter}"

    @property
    def hyper_names(self) -> list[str]:
        if self.pooling != "partial":
            return []
        return [self.hyper_site(h) for h in self.family.hyperparameters]

    @property
    def grouped(self) -> bool:
        """One value per group (rows of one group share it)."""
        return self.pooling != "complete"

    def describe(self) -> str:
        box = f"in [{self.parameter.lower:g}, {self.parameter.upper:g}]"
        if self.pooling == "partial":
            return f"{self.name} ~ {self.prior.describe()} {box}"
        mu = self.prior.hyperpriors["mu"]
        return f"{self.name} ~ {type(mu).__name__} (the mu hyperprior) {box}"

    def attrs(self) -> dict[str, object]:
        """What InferenceData's attrs record of this parameter."""
        return {"pooling": self.pooling, "prior": self.describe()}

    def truncated(self, base: Distribution) -> TruncatedToBox:
        """`base` restricted to the training box and renormalized."""
        p = self.parameter
        low = torch.tensor(p.lower, dtype=torch.float64)
        return TruncatedToBox(base, low, torch.tensor(p.upper, dtype=torch.float64))

    @cached_property
    def hyperpriors(self) -> dict[str, Distribution]:
        """The hyperpriors as sampled (Pyro distributions, values unchecked)."""
        return {
            h: as_pyro(unchecked(self.prior.hyperpriors[h]))
            for h in self.family.hyperparameters
        }

    @cached_property
    def fixed_prior(self) -> TruncatedToBox:
        """The prior of a complete or unpooled value: `mu`'s hyperprior in the box."""
        return self.truncated(unchecked(self.prior.hyperpriors["mu"]))

    def sample(self, sites: Sites, ceiling: Tensor | None) -> dict[str, Tensor]:
        """Its sites: hyperparameters, then the value(s); a shift parameter (with a
        `ceiling` per group) is sampled below its groups' fastest observations."""
        values: dict[str, Tensor] = {}
        if self.pooling == "partial":
            hyper = {
                h: sites.sample(self.hyper_site(h), self.hyperpriors[h])
                for h in self.family.hyperparameters
            }
            values.update({self.hyper_site(h): v for h, v in hyper.items()})
            prior = self.truncated(self.family.build(**hyper))
        else:
            prior = self.fixed_prior
        if ceiling is not None:
            prior = SampledBelow(prior, ceiling if self.grouped else ceiling.min())
        values[self.name] = sites.sample(self.name, prior, grouped=self.grouped)
        return values

    def cell_values(
        self, values: Mapping[str, Tensor], cell_group: Tensor | None, cells: int
    ) -> Tensor:
        """`(..., cells)`: each cell's value (its group's, or the common one)."""
        value = values[self.name]
        if not self.grouped:
            return value[..., None].expand(*value.shape, cells)
        return value if cell_group is None else value[..., cell_group]

    def start(self, ceiling: np.ndarray | None, num_groups: int) -> dict[str, Tensor]:
        """Constrained starting values of its sites: the typical value (below each
        group's ceiling for a shift), population mean and spread from those."""
        p = self.parameter
        center = typical_value(p, self.prior)
        bound = np.broadcast_to(
            np.inf if ceiling is None else np.asarray(ceiling, float), (num_groups,)
        )
        if self.grouped:
            group = [start_value(center, p.lower, p.upper, c) for c in bound]
        else:
            group = [start_value(center, p.lower, p.upper, float(bound.min()))]
        values = {
            self.name: torch.tensor(
                group if self.grouped else group[0], dtype=torch.float64
            )
        }
        if self.pooling == "partial":
            for h in self.family.hyperparameters:
                guess = {
                    "mu": float(np.mean(group)),
                    "sigma": max(float(np.std(group)), 0.1 * p.width),
                }.get(h)
                hyperprior = self.prior.hyperpriors[h]
                value = None if guess is None else torch.tensor(guess).double()
                if value is None or not bool(hyperprior.support.check(value)):
                    value = _median(hyperprior)
                values[self.hyper_site(h)] = value
        return values

    def posterior_variables(
        self, raw: Mapping[str, np.ndarray], group_dim: str
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[str]]]:
        """Its draws as InferenceData variables, with dims (the groups')."""
        out = {name: raw[name] for name in [*self.hyper_names, self.name]}
        dims = {self.name: [group_dim]} if self.grouped else {}
        return out, dims, {}

    def edge_values(
        self,
        raw: Mapping[str, np.ndarray],
        theta: np.ndarray,
        group_labels,
        cell_labels,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draws per unit (group, or the pooled value) for the domain-edge check."""
        values = raw[self.name]
        if not self.grouped:
            return values.reshape(-1, 1), np.array(["(pooled)"])
        return values.reshape(-1, values.shape[-1]), np.asarray(group_labels)


def _median(distribution: Distribution) -> Tensor:
    """A robust central value of any distribution: the median of 1001 draws, from
    a seeded generator that leaves the user's global one alone."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = distribution.sample((1001,))
    return draws.median(0).values.double()


def normalize_pooling(
    pooling: str | Mapping[str, str],
    simulator: Simulator,
    has_groups: bool,
    formulas: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A pooling mode per parameter without a formula; a dict may omit parameters
    (they get partial). Parameters with a formula take no pooling mode."""
    formulas = formulas or {}
    names = [n for n in simulator.parameter_names if n not in formulas]
    if isinstance(pooling, str):
        spec = dict.fromkeys(names, pooling)
    else:
        unknown = set(pooling) - set(simulator.parameter_names)
        if unknown:
            raise SbiPluginsError(
                f"pooling names unknown parameters {', '.join(sorted(unknown))}; "
                f"{simulator.name} has {', '.join(simulator.parameter_names)}"
            )
        both = sorted(set(pooling) & set(formulas))
        if both:
            raise SbiPluginsError(
                f"{', '.join(map(repr, both))} has both a pooling mode and a formula; "
                "give one (a formula such as 'v ~ 1 + (1|subject)' says the pooling "
                "itself)"
            )
        spec = {n: pooling.get(n, "partial") for n in names}
    for name, mode in spec.items():
        if mode not in POOLING_MODES:
            which = "" if isinstance(pooling, str) else f" for {name!r}"
            raise SbiPluginsError(
                f"pooling {mode!r}{which} is not one of {', '.join(POOLING_MODES)}"
            )
    grouped = [n for n, m in spec.items() if m != "complete"]
    if not has_groups and grouped:
        default = (
            " ('partial' is the default for parameters without a formula)"
            if not isinstance(pooling, str) or pooling == "partial"
            else ""
        )
        raise SbiPluginsError(
            f"pooling {', '.join(f'{n}={spec[n]}' for n in grouped)}{default}: "
            "'none' and 'partial' need groups: pass group=<column> (--group COL), "
            "or pooling='complete'"
        )
    return spec


def resolve_priors(
    simulator: Simulator, priors: Mapping[str, PopulationPrior | str] | None = None
) -> dict[str, PopulationPrior]:
    """Each parameter's population prior: the user's, else the plugin's default,
    else the normal family with hyperpriors scaled to the training box."""
    priors = dict(priors or {})
    unknown = set(priors) - set(simulator.parameter_names)
    if unknown:
        raise SbiPluginsError(
            f"priors name unknown parameters {', '.join(sorted(unknown))}; "
            f"{simulator.name} has {', '.join(simulator.parameter_names)}"
        )
    registry = get_registry()
    out = {}
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
        out[parameter.name] = prior
    return out


def plan_parameters(
    simulator: Simulator,
    pooling: Mapping[str, str],
    priors: Mapping[str, PopulationPrior | str] | None = None,
) -> list[ParameterPlan]:
    """The plans of the parameters `pooling` names (a mode each), in the
    simulator's order, with their priors (`resolve_priors`)."""
    resolved = resolve_priors(simulator, priors)
    return [
        ParameterPlan.of(p, pooling[p.name], resolved[p.name])
        for p in simulator.parameters
        if p.name in pooling
    ]
