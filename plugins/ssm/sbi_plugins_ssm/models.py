"""Simulators built from ssm-simulators' model configs: names, parameters and
training boxes exactly as ssm-simulators (and HSSM) spell them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import HalfNormal, Normal

from sbi_plugins.contract import (
    EstimatorRecipe,
    LogLikelihoodFn,
    Observable,
    Parameter,
    PopulationPrior,
    Simulator,
)
from sbi_plugins_ssm.reference import REFERENCE_DENSITIES
from sbi_plugins_ssm.simulator import NOISE_SHARED_BY_CALL, SSMSimulate

PLUGIN_VERSION = "1"
MODEL_VERSIONS = {"levy": "2", "levy_angle": "2"}
"""Plugin version of the models whose simulation changed since: levy's noise is
drawn per distinct alpha (`simulator.NOISE_SHARED_BY_CALL`), so an estimator
trained on the earlier simulations is not reused."""


def ssms_version() -> str:
    """ssm-simulators' major.minor: part of every model's version, so an estimator
    trained on another release of the simulators is never reused."""
    from importlib.metadata import version

    return ".".join(version("ssm-simulators").split(".")[:2])


RECIPE = EstimatorRecipe(
    kind="mnle",
    num_simulations=500_000,
    hidden_features=64,
    num_transforms=2,
    training_batch_size=1024,
    learning_rate=1e-3,
    max_num_epochs=20,
    stop_after_epochs=5,
    options={
        "log_transform_x": True,
        "num_bins": 8,
        "log_theta": "auto",
        "discrete_activation": "silu",
    },
    name="ssm-mnle",
)
"""The DDM plugin's recipe at half its simulations: about 5 minutes on one core."""

DESCRIPTIONS = {
    "angle": "DDM whose boundaries collapse linearly at angle theta",
    "weibull": "DDM, boundaries collapsing as a Weibull survival (alpha, beta)",
    "levy": "DDM with alpha-stable (heavy-tailed) noise: alpha 2 is Gaussian",
    "ornstein": "Ornstein-Uhlenbeck DDM: leak g > 0 pulls evidence back, g < 0 pushes",
    "ddm_sdv": "DDM with trial-to-trial drift variability sv",
    "full_ddm": "DDM with trial-to-trial variability of drift, start and onset",
    "ddm_st": "DDM with trial-to-trial variability of the non-decision time st",
    "levy_angle": "Levy-flight DDM with collapsing boundaries",
    "ornstein_angle": "Ornstein-Uhlenbeck DDM with collapsing boundaries",
    "race_no_bias_2": "race of two accumulators, common start z",
    "race_no_bias_3": "race of three accumulators (3 choices), common start z",
    "race_no_bias_4": "race of four accumulators (4 choices), common start z",
    "race_no_z_3": "race of three accumulators (3 choices), each starting at 0",
    "race_no_bias_angle_3": "three-accumulator race with collapsing bounds",
}
"""The catalogue: every model here is registered (`ddm` is not: the ddm plugin has it
with its exact density). The estimators of those in `estimators/manifest.json` are
shipped; the others are trained on first use and cached. Any other ssm-simulators
model is one `ssm_simulator("name")` away (docs/ssm.md)."""

BOX_OVERRIDES = {"ornstein": {"g": (-1.0, 0.5)}, "ornstein_angle": {"g": (-1.0, 0.5)}}
"""Where the config's box holds trials that never decide: ornstein's strong leak
(g up to 1) with a wide boundary leaves 2.7% of its box's trials undecided after
20 s; g up to 0.5 leaves 0.4%, under the 1% that training may drop."""

DDM_LIKE_PRIORS = {
    "v": (0.0, 1.5, 1.0),
    "a": (1.2, 0.6, 0.5),
    "z": (0.5, 0.15, 0.1),
    "t": (0.4, 0.4, 0.2),
}
"""(mu's mean, mu's sd, sigma's scale) for the parameters every DDM variant shares,
as in the ddm plugin; other parameters get the default: centred in the box."""


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _population_priors(parameters: tuple[Parameter, ...]) -> dict[str, PopulationPrior]:
    priors = {}
    for p in parameters:
        if p.name not in DDM_LIKE_PRIORS:
            continue
        mu, mu_sd, sigma_sd = DDM_LIKE_PRIORS[p.name]
        mu = min(max(mu, p.lower + 0.1 * p.width), p.upper - 0.1 * p.width)
        priors[p.name] = PopulationPrior(
            "normal",
            {"mu": Normal(_f64(mu), _f64(mu_sd)), "sigma": HalfNormal(_f64(sigma_sd))},
            f"{p.name} ~ Normal({p.name}_mu, {p.name}_sigma) in its box; "
            f"{p.name}_mu ~ Normal({mu:g}, {mu_sd:g}), "
            f"{p.name}_sigma ~ HalfNormal({sigma_sd:g})",
        )
    return priors


@dataclass(frozen=True)
class ModelConfig:
    """What sbi-plugins needs from one entry of `ssms.config.model_config`."""

    name: str
    params: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    choices: tuple[float, ...]

    @classmethod
    def lookup(cls, name: str) -> ModelConfig:
        from ssms.config import model_config

        if name not in model_config:
            close = sorted(m for m in model_config if m.startswith(name[:3]))[:8]
            raise KeyError(
                f"ssm-simulators has no model {name!r}"
                + (f"; similar: {', '.join(close)}" if close else "")
            )
        config = model_config[name]
        lower, upper = (list(b) for b in config["param_bounds"])
        for param, (low, high) in BOX_OVERRIDES.get(name, {}).items():
            i = config["params"].index(param)
            lower[i], upper[i] = low, high
        choices = config.get("choices") or list(range(config["nchoices"]))
        return cls(
            name,
            tuple(config["params"]),
            tuple(float(v) for v in lower),
            tuple(float(v) for v in upper),
            tuple(float(c) for c in choices),
        )


def onset_shift(names: Sequence[str]) -> str | None:
    """The parameter `rt` is shifted by: `t`, unless the model has onset
    variability (`st`), whose trials may end before `t`."""
    return "t" if "t" in names and "st" not in names else None


def earliest_rt(names: Sequence[str]) -> dict[str, float] | None:
    """What `rt` exceeds where the onset varies as `t + U(-st, st)`
    (ssm-simulators' convention): `t - st`. The network learns the excess, so the
    density's leading edge is exact, not a smoothed step that biases `t` and `st`."""
    return {"t": 1.0, "st": -1.0} if {"t", "st"} <= set(names) else None


def sequential_sampling_model(
    name: str,
    simulate: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    bounds: Mapping[str, tuple[float, float]],
    choices: Sequence[float] = (-1.0, 1.0),
    *,
    description: str = "",
    version: str = "1",
    recipe: EstimatorRecipe = RECIPE,
    log_likelihood: LogLikelihoodFn | None = None,
) -> Simulator:
    """A `Simulator` for any sequential sampling model: `simulate` maps `(n, p)`
    parameter rows (in the order of `bounds`) to `(n, 2)` rows of (rt in seconds,
    response code), NaN for a trial that never decides. `rt` is learned as
    `(rt - t) / a**2` where the model has `t` and a positive `a`, and as
    `(rt - t + st) / a**2` where the onset varies (`st`: then `t` only starts below
    each group's fastest `rt`); the
    DDM-like parameters get the ddm plugin's population priors.
    `log_likelihood` (optional) is a reference density, as in `Simulator`."""
    parameters = tuple(
        Parameter(p, float(lo), float(hi), f"{p!r} of {name}")
        for p, (lo, hi) in bounds.items()
    )
    names = tuple(bounds)
    shift = onset_shift(names)
    scale = {"a": 2.0} if "a" in names and bounds["a"][0] > 0 else None
    choices = tuple(float(c) for c in choices)
    codes = ", ".join(f"{c:g}" for c in choices)
    return Simulator(
        name=name,
        version=version,
        description=description or f"{name} ({len(choices)} choices)",
        parameters=parameters,
        observables=(
            Observable(
                "rt",
                "continuous",
                0.0,
                description="reaction time in seconds",
                shift=shift,
                exceeds=earliest_rt(names),
                scale=scale,
                start_below="t" if shift is None and "t" in names else None,
            ),
            Observable(
                "response",
                "choice",
                codes=choices,
                description=f"the choice made: {codes}"
                + (" (0/1 accepted)" if choices == (-1.0, 1.0) else ""),
            ),
        ),
        simulate=simulate,
        log_likelihood=log_likelihood,
        population_priors=_population_priors(parameters),
        recipe=recipe,
        example_group="participant_id",
    )


def ssm_simulator(
    name: str,
    *,
    description: str | None = None,
    recipe: EstimatorRecipe = RECIPE,
) -> Simulator:
    """The sbi-plugins `Simulator` of ssm-simulators' model `name`, its config's
    bounds as the training box: `sequential_sampling_model` with ssm-simulators'
    simulator, a version that carries its release and the reference density where
    there is one (`REFERENCE_DENSITIES`)."""
    config = ModelConfig.lookup(name)
    names = config.params
    t_index = names.index("t") if onset_shift(names) else None
    shared = NOISE_SHARED_BY_CALL.get(name)
    split_index = names.index(shared) if shared else None
    return sequential_sampling_model(
        name,
        SSMSimulate(name, t_index, split_index),
        dict(zip(names, zip(config.lower, config.upper, strict=True), strict=True)),
        config.choices,
        description=description
        or DESCRIPTIONS.get(
            name, f"ssm-simulators' {name} ({len(config.choices)} choices)"
        ),
        version=f"{MODEL_VERSIONS.get(name, PLUGIN_VERSION)}+ssms{ssms_version()}",
        recipe=recipe,
        log_likelihood=REFERENCE_DENSITIES.get(name),
    )
