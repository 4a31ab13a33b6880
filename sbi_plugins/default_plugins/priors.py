"""The built-in population prior families: truncated normal and mean/sd gamma."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, Gamma, HalfNormal, Normal

from sbi_plugins.contract import Parameter, PriorFamily
from sbi_plugins.plugin.hookspecs import hookimpl


def mean_sd_gamma(mu: torch.Tensor, sigma: torch.Tensor) -> dist.Gamma:
    """Gamma parametrized by mean and sd, as in the cookie model:
    Gamma(mu^2 / sigma^2, mu / sigma^2)."""
    mu, sigma = torch.as_tensor(mu), torch.as_tensor(sigma)
    return dist.Gamma(mu**2 / sigma**2, mu / sigma**2)


def _t(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float64)


def normal_hyperpriors(parameter: Parameter) -> dict[str, Distribution]:
    """Weakly informative on the parameter's own scale: the population mean is
    centred in the box with a quarter of its width as sd; the spread is half-normal
    with the same scale."""
    mid = (parameter.lower + parameter.upper) / 2
    return {
        "mu": Normal(_t(mid), _t(parameter.width / 4)),
        "sigma": HalfNormal(_t(parameter.width / 4)),
    }


def gamma_hyperpriors(parameter: Parameter) -> dict[str, Distribution]:
    """For positive parameters: population mean Gamma with mean at the box centre
    (shape 2), spread half-normal with a quarter of the box width."""
    mid = (parameter.lower + parameter.upper) / 2
    return {
        "mu": Gamma(_t(2.0), _t(2.0 / mid)),
        "sigma": HalfNormal(_t(parameter.width / 4)),
    }


def normal(mu: torch.Tensor, sigma: torch.Tensor) -> dist.Normal:
    return dist.Normal(mu, sigma)


NORMAL = PriorFamily(
    name="normal",
    hyperparameters=("mu", "sigma"),
    build=normal,
    default_hyperpriors=normal_hyperpriors,
    description="Normal(mu, sigma) truncated to the training box",
)

GAMMA = PriorFamily(
    name="gamma",
    hyperparameters=("mu", "sigma"),
    build=mean_sd_gamma,
    default_hyperpriors=gamma_hyperpriors,
    description="Gamma with mean mu and sd sigma, truncated to the training box",
)


@hookimpl
def register_priors(register) -> None:
    register(NORMAL)
    register(GAMMA)
