"""Pooling per parameter: one value for all groups, one per group, or a population.

Per parameter:
- "complete": one value shared by all groups, prior = the `mu` hyperprior truncated
  to the training box;
- "none": one independent value per group, each with that same prior;
- "partial": `<p>_mu`, `<p>_sigma` ~ hyperpriors, and each group's value ~ the
  family(mu, sigma) truncated to the box and renormalized.
Every group-level value therefore lives in the training box by construction. A
parameter's prior depends on its own mode and prior only, never on what the other
parameters are given.

A normal population is non-centered, as Bambi's and HSSM's group effects are: NUTS
samples a standard-normal `<p>_offset` per group and the group's value is the
truncated population's quantile at it (`normal_population_value`; mu + sigma *
offset in a wide box), a deterministic site. A centered population has the funnel
(sigma -> 0 squeezes every group value), which made the default DDM fit diverge and
take 26 leapfrog steps per draw. Other families (gamma) stay centered: the group
value is sampled through the interval's sigmoid transform.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_plugins.contract import (
    Parameter,
    PopulationPrior,
    PriorFamily,
    Simulator,
    describe_distribution,
)
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.model.distributions import (
    SampledBelow,
    TruncatedToBox,
    WeightedOffset,
    as_pyro,
    log_interval_mass,
    normal_population_offset,
    normal_population_value,
)
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
    centered: bool = False
    """Sample a normal population's group values directly (the baseline the
    non-centered form is measured against), not through offsets."""

    @classmethod
    def of(
        cls,
        parameter: Parameter,
        pooling: str,
        prior: PopulationPrior,
        centered: bool = False,
    ) -> ParameterPlan:
        """The plan of `parameter` in mode `pooling` with its resolved `prior`."""
        family = get_registry().prior_family(prior.family)
        return cls(parameter, pooling, prior, family, centered)

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
    def noncentered(self) -> bool:
        """A normal population, sampled through standard-normal offsets."""
        return (
            not self.centered
            and self.pooling == "partial"
            and self.family.name == "normal"
        )

    @property
    def offset_site(self) -> str:
        return f"{self.name}_offset"

    @property
    def grouped(self) -> bool:
        """One value per group (rows of one group share it)."""
        return self.pooling != "complete"

    def describe(self) -> str:
        box = f"in [{self.parameter.lower:g}, {self.parameter.upper:g}]"
        if self.pooling == "partial":
            return f"{self.name} ~ {self.prior.describe()} {box}"
        mu = self.prior.hyperpriors["mu"]
        return f"{self.name} ~ {describe_distribution(mu)} {box}"

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
            if self.noncentered:
                weight = self._offset_weight(hyper, ceiling)
                offset = sites.sample(
                    self.offset_site, WeightedOffset(weight), grouped=True
                )
                values[self.offset_site] = offset
                value = self._group_values(hyper, offset, ceiling)
                values[self.name] = sites.deterministic(self.name, value, grouped=True)
                return values
            prior = self.truncated(self.family.build(**hyper))
        else:
            prior = self.fixed_prior
        if ceiling is not None:
            prior = SampledBelow(prior, ceiling if self.grouped else ceiling.min())
        values[self.name] = sites.sample(self.name, prior, grouped=self.grouped)
        return values

    def _bounds(self, ceiling: Tensor | None) -> tuple[Tensor, Tensor]:
        """The interval the groups' values are drawn from: the box, below each
        group's ceiling for a shift parameter."""
        low = torch.tensor(self.parameter.lower, dtype=torch.float64)
        high = torch.tensor(self.parameter.upper, dtype=torch.float64)
        if ceiling is not None:
            high = torch.minimum(high, ceiling.to(torch.float64))
        return low, high

    def _offset_weight(self, hyper: Mapping[str, Tensor], ceiling: Tensor | None):
        """Each group's log mass below its ceiling, relative to the box's (zero
        without a ceiling): see `WeightedOffset`."""
        if ceiling is None:
            return torch.zeros((), dtype=torch.float64)
        low, high = self._bounds(ceiling)
        base = torch.distributions.Normal(
            hyper["mu"][..., None], hyper["sigma"][..., None]
        )
        box = torch.tensor(self.parameter.upper, dtype=torch.float64)
        return log_interval_mass(base, low, high) - log_interval_mass(base, low, box)

    def _group_values(
        self, hyper: Mapping[str, Tensor], offset: Tensor, ceiling: Tensor | None
    ) -> Tensor:
        """The groups' values at their offsets (leading dims: draws)."""
        low, high = self._bounds(ceiling)
        mu, sigma = hyper["mu"][..., None], hyper["sigma"][..., None]
        return normal_population_value(offset, mu, sigma, low, high)

    def derived(
        self, values: Mapping[str, Tensor], ceiling: Tensor | None
    ) -> dict[str, Tensor]:
        """Its deterministic sites from the sampled ones (the group values of a
        non-centered population); vectorized over leading draw dims."""
        if not self.noncentered or self.offset_site not in values:
            return {}
        hyper = {h: values[self.hyper_site(h)] for h in self.family.hyperparameters}
        return {self.name: self._group_values(hyper, values[self.offset_site], ceiling)}

    def cell_values(
        self, values: Mapping[str, Tensor], cell_group: Tensor | None, cells: int
    ) -> Tensor:
        """`(..., cells)`: each cell's value (its group's, or the common one)."""
        value = values[self.name]
        if not self.grouped:
            return value[..., None].expand(*value.shape, cells)
        return value if cell_group is None else value[..., cell_group]

    def start(
        self,
        ceiling: np.ndarray | None,
        num_groups: int,
        support_ceiling: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Constrained starting values of its sampled sites: the typical value
        (below each group's `ceiling` for a shift), population mean and spread from
        those; a non-centered population's offsets are those of the group values
        (`support_ceiling`: the model's, as in `sample`)."""
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
        if self.noncentered:
            group_values = values.pop(self.name)
            hyper = {h: values[self.hyper_site(h)] for h in self.family.hyperparameters}
            low, high = self._bounds(support_ceiling)
            values[self.offset_site] = normal_population_offset(
                group_values, hyper["mu"], hyper["sigma"], low, high
            )
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
                f"{pooling_hint(str(mode))}"
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


POOLING_WORDS = {
    "hierarchical": "partial",
    "pooled": "complete",
    "unpooled": "none",
    "separate": "none",
    "common": "complete",
}
"""What the modes are called elsewhere (HSSM's hierarchical=True, the pooled and
unpooled models of the partial-pooling literature)."""


def pooling_hint(mode: str) -> str:
    """The mode meant: another name for one, per-parameter modes written with ':'
    instead of '=', or a typo."""
    if mode.strip().lower() in POOLING_WORDS:
        return f": {mode.strip()!r} is {POOLING_WORDS[mode.strip().lower()]!r} here"
    if ":" in mode:
        return "; per parameter, write name=mode pairs such as v=partial,a=complete"
    close = difflib.get_close_matches(mode.strip().lower(), POOLING_MODES, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
