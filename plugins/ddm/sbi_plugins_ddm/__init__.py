"""The drift-diffusion model: choices and reaction times of two-alternative decisions.

Parameters as in ssm-simulators and HSSM (`v`, `a`, `z`, `t`), data columns `rt`
(seconds) and `response` (-1/1 as HSSM writes it, or 0/1), one row per trial.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd
import torch
from torch.distributions import HalfNormal, Normal

from sbi_plugins import hookimpl
from sbi_plugins.contract import (
    EstimatorArtifact,
    EstimatorRecipe,
    Observable,
    Parameter,
    PopulationPrior,
    Simulator,
)
from sbi_plugins_ddm.simulator import simulate
from sbi_plugins_ddm.wfpt import ddm_log_likelihood

ESTIMATOR_FILE = "ddm-mnle.pt"
ESTIMATOR_SHA256 = "e779344faf9c0ddd593eadb0c544a2c813a5a3f9b38d1c6d2dd1dd11fd9f5fdd"
"""Content checksum of the shipped estimator; `train_estimator.py` writes it."""

RECIPE = EstimatorRecipe(
    kind="mnle",
    num_simulations=1_000_000,
    hidden_features=64,
    num_transforms=2,
    training_batch_size=1024,
    learning_rate=1e-3,
    max_num_epochs=20,
    stop_after_epochs=20,
    options={
        "log_transform_x": True,
        "num_bins": 8,
        "log_theta": "auto",
        "discrete_activation": "silu",
    },
)
"""On (v a, z) (see `network_condition`) two spline layers and one training stage
do better than three layers and a 10M-simulation choice-net stage did on the raw
parameters: 5 x 100 study, largest neural-exact gap 0.16 posterior sd (was 0.43)."""

PARAMETERS = (
    Parameter("v", -3.0, 3.0, "drift rate (evidence per second, towards +1 if > 0)"),
    Parameter("a", 0.3, 2.5, "boundary: half the separation, as in ssm-simulators"),
    Parameter("z", 0.1, 0.9, "relative starting point (0.5: unbiased)"),
    Parameter("t", 0.0, 2.0, "non-decision time (seconds)"),
)


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _normal_population(name: str, mu: float, mu_sd: float, sigma_sd: float):
    return PopulationPrior(
        "normal",
        {"mu": Normal(_f64(mu), _f64(mu_sd)), "sigma": HalfNormal(_f64(sigma_sd))},
        f"{name} ~ Normal({name}_mu, {name}_sigma) in its box; {name}_mu ~ "
        f"Normal({mu:g}, {mu_sd:g}), {name}_sigma ~ HalfNormal({sigma_sd:g})",
    )


POPULATION_PRIORS = {
    "v": _normal_population("v", 0.0, 1.5, 1.0),
    "a": _normal_population("a", 1.2, 0.6, 0.5),
    "z": _normal_population("z", 0.5, 0.15, 0.1),
    "t": _normal_population("t", 0.4, 0.4, 0.2),
}
"""Weakly informative on the natural scale, each truncated to the training box."""


def log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The analytic first-passage-time density (Navarro & Fuss 2009), in log space."""
    return ddm_log_likelihood(theta, x)


def simulate_dataset(
    n_subjects: int = 10,
    n_trials: int = 100,
    seed: int = 0,
    population: dict[str, tuple[float, float]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic multi-subject data: each subject's (v, a, z, t) drawn from a normal
    population (mean, sd) clipped into the training box. Returns (trials, truth)."""
    population = population or {
        "v": (0.8, 0.5),
        "a": (1.0, 0.2),
        "z": (0.5, 0.0),
        "t": (0.3, 0.0),
    }
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame(
        {
            p.name: np.clip(
                rng.normal(*population[p.name], size=n_subjects),
                p.lower + 0.05 * p.width,
                p.upper - 0.05 * p.width,
            )
            for p in PARAMETERS
        }
    )
    truth.index.name = "participant_id"
    theta = np.repeat(truth.to_numpy(), n_trials, axis=0)
    x = simulate(theta, rng)
    trials = pd.DataFrame(
        {
            "participant_id": np.repeat(truth.index.to_numpy(), n_trials),
            "rt": x[:, 0],
            "response": x[:, 1].astype(int),
        }
    )
    return trials, truth


def example_data() -> pd.DataFrame:
    """Ten subjects, 100 trials each (seed 0): the walkthrough's data."""
    return simulate_dataset()[0]


DDM = Simulator(
    name="ddm",
    version="1",
    description="Drift-diffusion model (ssm-simulators' ddm): choices and RTs",
    parameters=PARAMETERS,
    observables=(
        Observable(
            "rt",
            "continuous",
            0.0,
            description="reaction time in seconds",
            shift="t",
            # first-passage times scale with the squared boundary (Navarro and Fuss,
            # 2009): (rt - t) / a**2 depends on v * a and z alone
            scale={"a": 2},
        ),
        Observable(
            "response",
            "choice",
            codes=(-1.0, 1.0),
            description="-1 lower, +1 upper boundary (0/1 accepted)",
        ),
    ),
    simulate=simulate,
    log_likelihood=log_likelihood,
    population_priors=POPULATION_PRIORS,
    recipe=RECIPE,
    example_data=example_data,
    example_group="participant_id",
    network_condition=({"v": 1, "a": 1}, {"z": 1}),
)


@hookimpl
def register_simulators(register) -> None:
    register(DDM)


@hookimpl
def register_estimators(register) -> None:
    path = files(__name__).joinpath(ESTIMATOR_FILE)
    if path.is_file():
        register(EstimatorArtifact("ddm", path, ESTIMATOR_SHA256, RECIPE.name))
