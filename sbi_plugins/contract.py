"""The plugin contract: what a simulator plugin hands to sbi-plugins.

A plugin depends on this module and on `sbi_plugins.hookimpl` only. Every object is
validated when it is built, so a malformed plugin fails at registration with a message
that names the field, not later inside a sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Distribution

from sbi_plugins.errors import ContractError

CONTRACT_VERSION = 1
"""The contract version this release implements; plugins state the one they target."""

OBSERVABLE_KINDS = ("count", "continuous", "choice")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ContractError(f"{kind} name {name!r} must be a Python identifier")


@dataclass(frozen=True)
class Parameter:
    """A simulator parameter and the box its estimator is trained on.

    `lower`/`upper` bound the training domain: a learned likelihood is only defined
    inside it, so every group-level value the runner proposes stays inside it.
    """

    name: str
    lower: float
    upper: float
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("parameter", self.name)
        lo, hi = float(self.lower), float(self.upper)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ContractError(
                f"parameter {self.name!r}: bounds must be finite, got [{lo}, {hi}]"
            )
        if lo >= hi:
            raise ContractError(
                f"parameter {self.name!r}: lower bound {lo} must be below upper "
                f"bound {hi} (bounds inverted?)"
            )
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def width(self) -> float:
        return self.upper - self.lower


@dataclass(frozen=True)
class Observable:
    """One column of the data: its kind decides the estimator (count -> categorical,
    choice + continuous -> MNLE) and its support is checked before sampling.

    `shift` names a parameter the value always exceeds by a positive random amount
    (a reaction time and its non-decision time). The estimator then learns the
    excess (`rt - t`), which has the same density; values at or below the shift get
    probability zero exactly, as in the exact likelihood, instead of a smoothed edge
    that would bias the shift parameter.

    `scale` (with or without a shift) says the value, after its shift, is a product
    of parameters times a quantity the network learns instead, e.g. `{"a": 2}`: the
    DDM's decision time is `a**2` times a time of boundary 1. Only parameters with
    positive lower bounds may appear in it.

    `start_below` names a parameter that sampling starts below each group's
    smallest value, as a shift does, without bounding it there afterwards: an
    onset with trial-to-trial variability (`t` of a model with `st`), which a
    trial may precede. Every value then exceeds `t`, so a density that is zero
    before `t - st` is positive on every row at the start.

    `exceeds` generalises `shift` to a sum of parameters times coefficients that
    the value always exceeds, e.g. `{"t": 1, "st": -1}`: the earliest reaction
    time of an onset that varies over `t -+ st`. The estimator learns the excess
    and values at or below it get probability zero, as with a shift, but no one
    parameter is bounded while sampling (give `start_below` for the start).
    """

    name: str
    kind: str
    lower: float | None = None
    upper: float = math.inf
    codes: tuple[float, ...] = ()
    description: str = ""
    shift: str | None = None
    scale: Mapping[str, float] | None = None
    start_below: str | None = None
    exceeds: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _check_name("observable", self.name)
        if self.lower is None:
            object.__setattr__(
                self, "lower", 0.0 if self.kind == "count" else -math.inf
            )
        object.__setattr__(self, "codes", tuple(float(c) for c in self.codes))
        if self.kind not in OBSERVABLE_KINDS:
            raise ContractError(
                f"observable {self.name!r}: kind {self.kind!r} is not one of "
                f"{', '.join(OBSERVABLE_KINDS)}"
            )
        if self.lower >= self.upper:
            raise ContractError(
                f"observable {self.name!r}: support lower {self.lower} must be below "
                f"upper {self.upper}"
            )
        if self.kind == "choice" and len(self.codes) < 2:
            raise ContractError(
                f"observable {self.name!r}: a choice needs at least two codes"
            )
        if self.kind == "count" and self.lower < 0:
            raise ContractError(f"observable {self.name!r}: counts start at 0")
        if self.shift is not None and self.start_below is not None:
            raise ContractError(
                f"observable {self.name!r}: give shift or start_below, not both (a "
                "shift parameter already starts below the value)"
            )
        if self.shift is not None and self.exceeds is not None:
            raise ContractError(
                f"observable {self.name!r}: give shift or exceeds, not both (a shift "
                "is exceeds={shift: 1} that also bounds its parameter)"
            )
        floor = self.onset(start=True) is not None or self.exceeds is not None
        if floor and self.kind != "continuous":
            raise ContractError(
                f"observable {self.name!r}: only a continuous observable can have a "
                "shift, exceeds or start_below"
            )
        if self.scale is not None and (self.kind != "continuous" or not self.scale):
            raise ContractError(
                f"observable {self.name!r}: scale needs a continuous observable and "
                "at least one parameter"
            )

    def onset(self, start: bool = False) -> str | None:
        """The parameter this value must exceed: its shift while sampling, and at
        the start (`start`) also its `start_below`."""
        return self.shift or (self.start_below if start else None)

    def floor(self) -> dict[str, float] | None:
        """What the estimator takes off the value, as coefficients per parameter:
        the shift (`{shift: 1}`) or `exceeds`; None for neither."""
        if self.shift is not None:
            return {self.shift: 1.0}
        return {k: float(c) for k, c in self.exceeds.items()} if self.exceeds else None


@dataclass(frozen=True)
class PopulationPrior:
    """A group-level prior: a registered family and its hyperpriors.

    With partial pooling each group's value is drawn from
    `family(**hyperparameters)` truncated to the training box; with complete or no
    pooling the hyperprior of `mu` (truncated to the box) is the prior of each value.
    """

    family: str
    hyperpriors: Mapping[str, Distribution]
    description: str = ""

    def __post_init__(self) -> None:
        for name, prior in self.hyperpriors.items():
            _check_name("hyperparameter", name)
            if not isinstance(prior, Distribution):
                raise ContractError(
                    f"hyperprior {name!r} of family {self.family!r} must be a torch "
                    f"distribution, got {type(prior).__name__}"
                )

    def describe(self) -> str:
        hyper = ", ".join(
            f"{k} ~ {describe_distribution(d)}" for k, d in self.hyperpriors.items()
        )
        return f"{self.family}({hyper})"


def describe_distribution(distribution: Distribution) -> str:
    """A short readable form such as `Gamma(2, 0.2)` for attrs and docs."""
    params = []
    for name in distribution.arg_constraints:
        value = getattr(distribution, name, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            params.append(f"{value.item():.4g}")
    return f"{type(distribution).__name__}({', '.join(params)})"


@dataclass(frozen=True)
class PriorFamily:
    """A family of group-level distributions, registered by name.

    `build(**hyperparameters)` returns a torch distribution that implements `cdf`,
    which the runner needs to normalize its truncation to the training box.
    """

    name: str
    hyperparameters: tuple[str, ...]
    build: Callable[..., Distribution]
    default_hyperpriors: Callable[[Parameter], dict[str, Distribution]]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("prior family", self.name)
        if "mu" not in self.hyperparameters:
            raise ContractError(
                f"prior family {self.name!r} needs a location hyperparameter 'mu'"
            )

    def prior_for(self, parameter: Parameter) -> PopulationPrior:
        return PopulationPrior(self.name, self.default_hyperpriors(parameter))


@dataclass(frozen=True)
class EstimatorRecipe:
    """How to train the estimator of a simulator: the network and its budget."""

    kind: str = "auto"
    num_simulations: int = 100_000
    hidden_features: int = 64
    num_layers: int = 2
    num_transforms: int = 2
    training_batch_size: int = 512
    learning_rate: float = 1e-3
    max_num_epochs: int = 200
    stop_after_epochs: int = 10
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str = "default"

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "categorical", "mnle", "nsf"):
            raise ContractError(
                f"estimator recipe kind {self.kind!r} is not one of auto, "
                "categorical, mnle, nsf"
            )
        if self.num_simulations < 100:
            raise ContractError("an estimator recipe needs at least 100 simulations")


SimulateFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]
LogLikelihoodFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Simulator:
    """A simulator plugin: parameters, observables, and how to simulate one trial per
    parameter row.

    `simulate(theta, rng)` takes an `(n, len(parameters))` float array and a numpy
    Generator and returns an `(n, len(observables))` array. `log_likelihood(theta, x)`
    (optional, torch, differentiable in theta) is the exact reference.

    `network_condition` (optional) declares that, once shifts and scales are taken
    out, the data depend on the parameters only through these products of them, e.g.
    `({"v": 1, "a": 1}, {"z": 1})` for the DDM; the estimator is then conditioned on
    those products (see `sbi_plugins.estimators.reduction`). Only declare an exact
    symmetry: `check` and the tests compare against the exact likelihood where
    there is one.

    `estimator_providers` names the other plugins (entry-point or distribution
    names) allowed to register estimator files for this simulator. By default only
    the simulator's own plugin may, so that installing another package cannot change
    the estimator a fit of this simulator uses.
    """

    name: str
    parameters: tuple[Parameter, ...]
    observables: tuple[Observable, ...]
    simulate: SimulateFn
    version: str = "0"
    description: str = ""
    log_likelihood: LogLikelihoodFn | None = None
    population_priors: Mapping[str, PopulationPrior] = field(default_factory=dict)
    recipe: EstimatorRecipe = field(default_factory=EstimatorRecipe)
    example_data: Callable[[], Any] | None = None
    example_group: str | None = None
    network_condition: tuple[Mapping[str, float], ...] | None = None
    contract_version: int = CONTRACT_VERSION
    estimator_providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("simulator", self.name)
        object.__setattr__(self, "parameters", tuple(self.parameters))
        object.__setattr__(self, "observables", tuple(self.observables))
        if not self.parameters:
            raise ContractError(f"simulator {self.name!r} has no parameters")
        if not self.observables:
            raise ContractError(f"simulator {self.name!r} has no observables")
        names = [p.name for p in self.parameters] + [o.name for o in self.observables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ContractError(
                f"simulator {self.name!r}: duplicate names {', '.join(duplicates)} "
                "among parameters and observables"
            )
        for obs in self.observables:
            onset = obs.onset(start=True)
            if onset is not None and onset not in self.parameter_names:
                raise ContractError(
                    f"simulator {self.name!r}: observable {obs.name!r} must exceed "
                    f"{onset!r} (shift or start_below), which is not a parameter"
                )
            for name in obs.exceeds or {}:
                if name not in self.parameter_names:
                    raise ContractError(
                        f"simulator {self.name!r}: observable {obs.name!r} exceeds "
                        f"a sum with {name!r}, which is not a parameter"
                    )
            for name in obs.scale or {}:
                if name not in self.parameter_names:
                    raise ContractError(
                        f"simulator {self.name!r}: observable {obs.name!r} is scaled "
                        f"by {name!r}, which is not a parameter"
                    )
                if self.parameter(name).lower <= 0:
                    raise ContractError(
                        f"simulator {self.name!r}: observable {obs.name!r} is scaled "
                        f"by {name!r}, whose lower bound is not positive"
                    )
        for product in self.network_condition or ():
            unknown = set(product) - set(self.parameter_names)
            if unknown or not product or 0 in product.values():
                raise ContractError(
                    f"simulator {self.name!r}: network_condition entry {dict(product)} "
                    "must be a non-empty mapping of parameter names to non-zero powers"
                )
        unknown = set(self.population_priors) - set(self.parameter_names)
        if unknown:
            raise ContractError(
                f"simulator {self.name!r}: population priors for unknown parameters "
                f"{', '.join(sorted(unknown))}"
            )

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def observable_names(self) -> list[str]:
        return [o.name for o in self.observables]

    @property
    def lower(self) -> np.ndarray:
        return np.array([p.lower for p in self.parameters])

    @property
    def upper(self) -> np.ndarray:
        return np.array([p.upper for p in self.parameters])

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(
            f"simulator {self.name!r} has no parameter {name!r}; it has "
            f"{', '.join(self.parameter_names)}"
        )

    def estimator_kind(self) -> str:
        """The estimator the observables call for (discrete data, discrete model)."""
        if self.recipe.kind != "auto":
            return self.recipe.kind
        kinds = {o.kind for o in self.observables}
        if kinds == {"count"}:
            return "categorical"
        if kinds == {"continuous"}:
            return "nsf"
        if kinds == {"choice", "continuous"}:
            return "mnle"
        raise ContractError(
            f"simulator {self.name!r}: no default estimator for observables of kinds "
            f"{sorted(kinds)}; set recipe.kind"
        )

    def sample_training_prior(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform over the training box: the estimator sees every corner equally."""
        return rng.uniform(self.lower, self.upper, size=(n, len(self.parameters)))

    def validate(self, rng: np.random.Generator | None = None) -> None:
        """Run the simulator on a small batch and check the shape it returns."""
        rng = rng or np.random.default_rng(0)
        theta = self.sample_training_prior(8, rng)
        try:
            x = np.asarray(self.simulate(theta, rng))
        except Exception as exc:
            raise ContractError(
                f"simulator {self.name!r}: simulate raised {type(exc).__name__}: {exc}"
            ) from exc
        expected = (8, len(self.observables))
        if x.shape != expected:
            raise ContractError(
                f"simulator {self.name!r}: simulate returned shape {x.shape} for 8 "
                f"parameter rows; expected {expected} (one row per parameter row, one "
                f"column per observable {self.observable_names})"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise ContractError(
                f"simulator {self.name!r}: simulate returned dtype {x.dtype}, "
                "expected numbers"
            )


def outside_support(simulator: Simulator, x: np.ndarray) -> np.ndarray:
    """Per row and observable: a finite value the observable's declared support (or
    codes, or integrality) does not allow; the data checks would refuse it.

    Here, beside the declaration it reads, so that training (which refuses such
    output) and `sbi-plugins check` (which reports it) apply one rule."""
    bad = np.zeros(x.shape, dtype=bool)
    for j, obs in enumerate(simulator.observables):
        column = x[:, j]
        finite = np.isfinite(column)
        if obs.kind == "continuous":
            out = (column <= obs.lower) | (column >= obs.upper)
        else:
            out = (column < obs.lower) | (column > obs.upper)
        if obs.kind == "count":
            out |= column != np.round(column)
        elif obs.kind == "choice":
            out |= ~np.isin(column, obs.codes)
        bad[:, j] = finite & out
    return bad


@dataclass(frozen=True)
class EstimatorArtifact:
    """A trained estimator file a plugin ships, with the checksum it must have."""

    simulator: str
    path: Path | Traversable
    sha256: str
    recipe: str = "default"

    def __post_init__(self) -> None:
        if len(self.sha256) != 64:
            raise ContractError(
                f"estimator artifact for {self.simulator!r}: sha256 must be 64 hex "
                f"characters, got {self.sha256!r}"
            )
