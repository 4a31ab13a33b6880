"""ssm-simulators' sequential sampling models as sbi-plugins simulators.

Models without a usable likelihood (collapsing bounds, Levy noise, leak,
inter-trial variability, races with 2-4 choices) under their ssm-simulators names,
parameters and bounds, with `rt` and `response` columns as in the ddm plugin. The
catalogue is `CATALOGUE`; `SHIPPED` names those with a trained estimator in the
package, the others train on first use (progress bar, cached). `ddm_sdv` and
`full_ddm` also carry a reference density (`reference.REFERENCE_DENSITIES`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib.resources import files

import numpy as np
import pandas as pd

from sbi_plugins import hookimpl
from sbi_plugins.contract import EstimatorArtifact, Simulator
from sbi_plugins_ssm.models import DESCRIPTIONS, RECIPE, ssm_simulator

MANIFEST = "manifest.json"
"""`estimators/manifest.json`: model -> {"file", "sha256", ...}, written by
`train_estimators.py` with each estimator's held-out figures."""

TYPICAL = {"v": (0.8, 0.5), "a": (1.0, 0.2), "z": (0.5, 0.0), "t": (0.3, 0.0)}
"""Population (mean, sd) of the simulated example subjects, as in the ddm plugin;
other parameters sit at the centre of their box with sd 5% of its width. A mean
is moved to at least one sd inside the box's inner 90%: the races' `a` in [1, 3]
(mean 1.0) would otherwise leave most subjects clipped at 1.1, no population."""


def manifest() -> dict[str, dict]:
    """The shipped estimators' records, by model name."""
    return json.loads(files(__name__).joinpath("estimators", MANIFEST).read_text())


CATALOGUE: tuple[str, ...] = tuple(DESCRIPTIONS)
SHIPPED: tuple[str, ...] = tuple(m for m in CATALOGUE if m in manifest())


def simulate_dataset(
    simulator: Simulator | str,
    n_subjects: int = 10,
    n_trials: int = 100,
    seed: int = 0,
    population: dict[str, tuple[float, float]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic multi-subject data: each subject's parameters drawn from a normal
    population (mean, sd) clipped into the inner 90% of the box. Returns
    (trials, truth)."""
    if isinstance(simulator, str):
        simulator = ssm_simulator(simulator)
    rng = np.random.default_rng(seed)
    columns = {}
    for p in simulator.parameters:
        low, high = p.lower + 0.05 * p.width, p.upper - 0.05 * p.width
        mean, sd = TYPICAL.get(p.name, ((p.lower + p.upper) / 2, 0.05 * p.width))
        mean = min(max(mean, low + sd), high - sd)
        mean, sd = (population or {}).get(p.name, (mean, sd))
        columns[p.name] = np.clip(rng.normal(mean, sd, size=n_subjects), low, high)
    truth = pd.DataFrame(columns)
    truth.index.name = "participant_id"
    theta = np.repeat(truth.to_numpy(), n_trials, axis=0)
    x = simulator.simulate(theta, rng)
    trials = pd.DataFrame(
        {
            "participant_id": np.repeat(truth.index.to_numpy(), n_trials),
            "rt": x[:, 0],
            "response": x[:, 1].astype(int),
        }
    )
    return trials, truth


class _ExampleData:
    """Ten simulated subjects of 100 trials (seed 0), picklable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> pd.DataFrame:
        return simulate_dataset(self.name)[0].dropna()


@hookimpl
def register_simulators(register) -> None:
    for name in CATALOGUE:
        register(replace(ssm_simulator(name), example_data=_ExampleData(name)))


@hookimpl
def register_estimators(register) -> None:
    root = files(__name__).joinpath("estimators")
    for name, record in manifest().items():
        path = root.joinpath(record["file"])
        if path.is_file():
            register(EstimatorArtifact(name, path, record["sha256"], RECIPE.name))
