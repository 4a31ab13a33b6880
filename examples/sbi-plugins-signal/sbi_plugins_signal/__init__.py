# sbi-plugins-signal/sbi_plugins_signal/__init__.py
"""A Gaussian signal with noise: the sbi-plugins tutorial plugin.

Every trial measures a signal with noise, `y ~ Normal(mu, sigma)`; each site (a lab,
a sensor, a subject) has its own mean signal `mu` and noise sd `sigma`. Built step
by step in docs/writing-a-plugin.md.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import torch
from torch.distributions import Gamma, HalfNormal, Normal

from sbi_plugins import (
    EstimatorArtifact,
    EstimatorRecipe,
    Observable,
    Parameter,
    PopulationPrior,
    Simulator,
    hookimpl,
)

ESTIMATOR_FILE = "signal-nsf.pt"
ESTIMATOR_SHA256 = "78dc470679aeeec937566136e0b76e21f801264f79bad3ff5cbeaa6bc84a4e6d"
"""Checksum of the shipped estimator; `train_estimator.py` rewrites this line."""


def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One trial per parameter row (columns mu, sigma): one noisy measurement y.

    All randomness comes from `rng`, so a seed reproduces the output."""
    mu, sigma = theta[:, 0], theta[:, 1]
    y = mu + sigma * rng.standard_normal(len(theta))
    return y[:, None]


def log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The exact log-density, in torch so NUTS can differentiate it: the reference
    `sbi-plugins check` holds the learned likelihood to."""
    return Normal(theta[..., 0], theta[..., 1]).log_prob(x[..., 0])


def f64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


SITES = {
    "a": (-1.2, 0.8),
    "b": (-0.5, 1.0),
    "c": (0.1, 0.7),
    "d": (0.4, 1.4),
    "e": (1.3, 1.1),
    "f": (0.6, 0.9),
}
"""True (mu, sigma) of the example sites."""


def example_data(trials: int = 25, seed: int = 7) -> pd.DataFrame:
    """Simulated measurements: `trials` rows for each of the sites in SITES."""
    rng = np.random.default_rng(seed)
    theta = np.repeat(np.array(list(SITES.values())), trials, axis=0)
    return pd.DataFrame(
        {"site": np.repeat(list(SITES), trials), "y": simulate(theta, rng)[:, 0]}
    )


SIGNAL = Simulator(
    name="signal",
    version="1",
    contract_version=1,
    description="A noisy measurement of a signal: y ~ Normal(mu, sigma)",
    parameters=(
        Parameter("mu", -2.0, 2.0, "mean signal"),
        Parameter("sigma", 0.5, 2.0, "noise sd"),
    ),
    observables=(Observable("y", "continuous", description="one measurement"),),
    simulate=simulate,
    log_likelihood=log_likelihood,
    population_priors={
        "mu": PopulationPrior(
            "normal", {"mu": Normal(f64(0.0), f64(1.0)), "sigma": HalfNormal(f64(1.0))}
        ),
        "sigma": PopulationPrior(
            "gamma", {"mu": Gamma(f64(4.0), f64(4.0)), "sigma": HalfNormal(f64(0.5))}
        ),
    },
    recipe=EstimatorRecipe(
        kind="nsf",
        num_simulations=50_000,
        hidden_features=32,
        num_transforms=2,
        training_batch_size=512,
        max_num_epochs=20,
        stop_after_epochs=20,
    ),
    example_data=example_data,
    example_group="site",
)


@hookimpl
def register_simulators(register) -> None:
    register(SIGNAL)


@hookimpl
def register_estimators(register) -> None:
    path = files(__name__).joinpath(ESTIMATOR_FILE)
    if path.is_file():
        register(EstimatorArtifact("signal", path, ESTIMATOR_SHA256))
