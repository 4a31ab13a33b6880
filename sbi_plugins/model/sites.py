"""What the model's one statement is run with.

`HierarchicalModel.body` names every random variable once, through a `sites`
object: `sites.sample(name, distribution, grouped)` and `sites.observe(name,
distribution, value)`. Run with `PyroSites` it is the Pyro model (plates, traces,
NUTS's set-up, Pyro's own potential); with `LogJoint` it is the log joint density at
given values (the potential that is compiled); with `PriorSites` it draws from the
prior. So there is one model, and what is sampled fast is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import pyro
from torch import Tensor
from torch.distributions import Distribution

OBS_PLATE = "__obs__"


class Sites(Protocol):
    def sample(self, name: str, distribution: Distribution, grouped: bool = False):
        """The value of a latent site; `grouped`: one value per group (a plate)."""

    def deterministic(self, name: str, value: Tensor, grouped: bool = False) -> Tensor:
        """A value computed from other sites (a non-centered group's value)."""

    def observe(self, name: str, distribution: Distribution, value: Tensor) -> None:
        """The data rows' site."""


class PyroSites:
    """The statement as a Pyro model: latent sites sampled, groups in a plate, the
    rows in a plate of their own."""

    def __init__(self, group_dim: str, num_groups: int) -> None:
        self.groups = pyro.plate(group_dim, num_groups, dim=-1)

    def sample(self, name: str, distribution: Distribution, grouped: bool = False):
        if grouped:
            with self.groups:
                return pyro.sample(name, distribution)
        return pyro.sample(name, distribution)

    def deterministic(self, name: str, value: Tensor, grouped: bool = False) -> Tensor:
        if grouped:
            with self.groups:
                return pyro.deterministic(name, value)
        return pyro.deterministic(name, value)

    def observe(self, name: str, distribution: Distribution, value: Tensor) -> None:
        with pyro.plate(OBS_PLATE, value.shape[0], dim=-1):
            pyro.sample(name, distribution, obs=value)


class LogJoint:
    """The statement as a sum: log p(values, data), each site scored at its value."""

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        self.values = values
        self.total: Tensor | float = 0.0

    def sample(self, name: str, distribution: Distribution, grouped: bool = False):
        value = self.values[name]
        self.total = self.total + distribution.log_prob(value).sum()
        return value

    def deterministic(self, name: str, value: Tensor, grouped: bool = False) -> Tensor:
        return value

    def observe(self, name: str, distribution: Distribution, value: Tensor) -> None:
        self.total = self.total + distribution.log_prob(value).sum()


class PriorSites:
    """The statement as a prior draw: every latent site sampled, nothing observed
    (data are simulated by the simulator, not by the model's likelihood)."""

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.values: dict[str, Tensor] = {}

    def sample(self, name: str, distribution: Distribution, grouped: bool = False):
        if grouped and tuple(distribution.batch_shape) != (self.num_groups,):
            distribution = distribution.expand((self.num_groups,))
        value = distribution.sample()
        self.values[name] = value
        return value

    def deterministic(self, name: str, value: Tensor, grouped: bool = False) -> Tensor:
        self.values[name] = value
        return value

    def observe(self, name: str, distribution: Distribution, value: Tensor) -> None:
        return None
