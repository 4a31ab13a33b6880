"""data -> hierarchical Pyro model -> NUTS -> InferenceData."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sbi_plugins.contract import PopulationPrior, Simulator
from sbi_plugins.data import PreparedData, prepare_data, read_table
from sbi_plugins.errors import DomainWarning, SbiPluginsError
from sbi_plugins.estimators import TrainedEstimator, resolve_estimator
from sbi_plugins.inference.nuts import run_nuts
from sbi_plugins.inference.starts import (
    StartProblem,
    chain_starts,
    check_explainable,
    shift_ceilings,
)
from sbi_plugins.likelihoods.distribution import Likelihood, check_observations
from sbi_plugins.likelihoods.lapse import Lapse, make_lapse, mix, share_draws
from sbi_plugins.model.pooling import (
    HierarchicalModel,
    ParameterPlan,
    describe_plans,
    normalize_pooling,
    plan_parameters,
)
from sbi_plugins.model.potential import compiled_potential, worth_compiling
from sbi_plugins.plugin.registry import get_simulator
from sbi_plugins.results.idata import build_inference_data, log_likelihood_name
from sbi_plugins.results.predictive import (
    draw_batches,
    predictive_draws,
    simulate_predictive,
)
from sbi_plugins.versions import package_versions

EDGE_FRACTION = 0.01
"""Draws within this fraction of the box width from a bound count as 'at the edge'."""


def fit(
    data: pd.DataFrame | str | Path,
    simulator: str | Simulator,
    *,
    group: str | None = None,
    pooling: str | Mapping[str, str] = "partial",
    priors: Mapping[str, PopulationPrior | str] | None = None,
    estimator: TrainedEstimator | str | Path | None = None,
    likelihood: str = "neural",
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int | None = None,
    progress: bool = True,
    cores: int | None = None,
    target_accept: float = 0.8,
    posterior_predictive: bool | int = True,
    formulas: Mapping[str, str] | list[str] | str | None = None,
    compile: bool | None = None,
    p_outlier: bool | float | torch.distributions.Distribution | None = None,
) -> az.InferenceData:
    """Fit a simulator's hierarchical model to data with NUTS.

    `pooling` is "complete", "none", "partial" or a dict per parameter. With
    `likelihood="exact"` the plugin's exact log-likelihood replaces the learned one
    in the very same model: the reference a neural fit is held to.

    `posterior_predictive`: True simulates one data set per draw, thinned evenly to
    at most 2 million simulated rows for large data; an int asks for that many draws
    per chain; False skips it.

    `formulas`, e.g. `{"v": "v ~ 1 + difficulty + (1|participant_id)"}`, give
    parameters regression formulas (see `sbi_plugins.model.formulas`); the others follow
    `pooling`, translated to its formula.

    `compile`: compile the model's potential with `torch.compile` before sampling
    (needs a C++ compiler; 5-40 s once, then each leapfrog step costs a fraction).
    None compiles when chains x (draws + tune) reaches 4000 (the default fit) and
    the data have at least 500 rows, or as the environment variable
    SBI_PLUGINS_COMPILE=0/1 says. Formula models are not compiled.

    `p_outlier`: a lapse component for trials the simulator did not produce (fast
    guesses, attention lapses), with HSSM's semantics: each row is a mixture of the
    model and a lapse distribution (uniform over each column's observed range,
    choices uniform). A number fixes the share (e.g. 0.05), True estimates it with
    a Beta(2, 38) prior, a distribution on (0, 1) is its prior. See
    `sbi_plugins.likelihoods.lapse`.
    """
    sim = get_simulator(simulator)
    if likelihood not in ("neural", "exact"):
        raise SbiPluginsError(
            f"likelihood must be 'neural' or 'exact', got {likelihood!r}"
        )
    if min(draws, chains) < 1 or tune < 0:
        raise SbiPluginsError("draws and chains must be at least 1, tune at least 0")
    if cores is not None and cores < 0:
        raise SbiPluginsError(
            f"cores must be at least 1 (or left out for one per core), got {cores}"
        )
    if formulas is not None:
        data = data if isinstance(data, pd.DataFrame) else read_table(data)
    prepared = prepare_data(data, sim, group)
    lapse = make_lapse(p_outlier, sim, prepared.x)
    if formulas is not None:
        from sbi_plugins.model.formula_fit import plan_from_arguments

        formula_plan = plan_from_arguments(data, sim, formulas, pooling, group, priors)
    else:
        plans = plan_parameters(
            sim, normalize_pooling(pooling, sim, group is not None), priors
        )
    # the data's own checks first: no estimator is trained for data that cannot fit
    check_observations(sim, None, prepared.x, prepared.row_labels)
    check_explainable(sim, prepared.x, prepared.row_labels, lapse is not None)
    if likelihood == "exact":
        lik = Likelihood(sim)
    else:
        lik = Likelihood(sim, resolve_estimator(sim, estimator, progress=progress))
    if not lik.exact:
        check_observations(sim, lik.estimator, prepared.x, prepared.row_labels)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if formulas is not None:
        from sbi_plugins.model.formula_fit import fit_formula_model

        return fit_formula_model(
            formula_plan,
            sim,
            prepared,
            lik,
            sampler={
                "draws": draws,
                "tune": tune,
                "chains": chains,
                "progress": progress,
                "cores": cores,
                "target_accept": target_accept,
            },
            seed=seed,
            posterior_predictive=posterior_predictive,
            lapse=lapse,
        )

    model, model_kwargs = build_model(plans, prepared, lik, lapse)
    start = model_start(model, prepared, sim)
    starts = pooling_chain_starts(model, model_kwargs, start, prepared, chains, seed)
    potential = None
    if worth_compiling(compile, chains, draws + tune, len(prepared.x)):
        if progress:
            tqdm.write("compiling the model's potential (cached for later fits)")
        potential = compiled_potential(model, model_kwargs, start)
    results = run_nuts(
        model,
        model_kwargs,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        progress=progress,
        cores=cores,
        target_accept=target_accept,
        potential=potential,
        starts=starts,
    )
    posterior = _stack([r.samples for r in results])
    theta = group_parameter_draws(posterior, plans, prepared.num_groups)
    share = share_draws(lapse, posterior, (chains, draws))
    hints = {} if lapse is not None else fast_guess_hints(sim)
    edge_warnings = warn_at_domain_edges(posterior, plans, prepared, hints)
    sample_stats = _stack([r.stats for r in results])
    warn_divergences(sample_stats, target_accept)
    selected = predictive_draws(posterior_predictive, (chains, draws), len(prepared.x))
    attrs = {
        "simulator": sim.name,
        "simulator_version": sim.version,
        "likelihood": likelihood,
        "estimator_checksum": "" if lik.exact else lik.estimator.checksum,
        "estimator_source": "" if lik.exact else lik.estimator.source,
        "pooling": json.dumps({p.name: p.pooling for p in plans}),
        "priors": describe_plans(plans),
        "group": prepared.group or "",
        "seed": seed,
        # the same seed gives the same draws only with the same setting
        "compiled": int(potential is not None),
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "versions": json.dumps(package_versions()),
        "domain_warnings": json.dumps(edge_warnings),
        "p_outlier": "" if lapse is None else lapse.describe(),
    }
    return build_inference_data(
        posterior=posterior,
        sample_stats=sample_stats,
        log_likelihood=pointwise_log_likelihood(lik, theta, prepared, lapse, share),
        posterior_predictive=simulate_predictive(
            sim,
            theta,
            prepared,
            seed,
            selected,
            workers=cores,
            progress=progress,
            lapse=lapse,
            share=share,
        ),
        predictive_draw_index=selected,
        data=prepared,
        simulator=sim,
        plans=plans,
        attrs=attrs,
    )


def build_model(
    plans: list[ParameterPlan],
    data: PreparedData,
    lik: Likelihood,
    lapse: Lapse | None = None,
) -> tuple[HierarchicalModel, dict]:
    """The Pyro model of `plans` and the keyword arguments it is run with."""
    ceilings = None
    if lapse is None:
        ceilings = shift_ceilings(
            lik.simulator, data.x, data.group_index, data.num_groups, lapses=False
        )
    model = HierarchicalModel(plans, data.num_groups, data.group_dim, lapse, ceilings)
    return model, {
        "x": torch.as_tensor(data.x, dtype=torch.float64),
        "group_index": torch.as_tensor(data.group_index),
        "likelihood": lik,
        "site": log_likelihood_name(lik.simulator),
    }


def model_start(
    model: HierarchicalModel, data: PreparedData, simulator: Simulator
) -> dict[str, torch.Tensor]:
    """The model's starting values for these data (`sbi_plugins.inference.starts`)."""
    ceilings = shift_ceilings(
        simulator,
        data.x,
        data.group_index,
        data.num_groups,
        lapses=model.lapse is not None,
    )
    return model.start(ceilings)


def pooling_chain_starts(
    model: HierarchicalModel,
    model_kwargs: dict,
    start: dict[str, torch.Tensor],
    data: PreparedData,
    chains: int,
    seed: int,
) -> list[dict[str, torch.Tensor]]:
    """Per-chain starts of the pooling model (`inference.starts.chain_starts`), with its group values at hand to name the rows where a start fails."""
    problem = StartProblem(
        model_kwargs["likelihood"],
        lambda values: torch.as_tensor(
            group_parameter_draws(
                {k: v.numpy() for k, v in values.items()},
                model.plans,
                data.num_groups,
            )
        ),
        data.group_index,
        data.x,
        data.row_labels,
        data.group_labels,
        data.group_dim,
    )
    return chain_starts(model, model_kwargs, start, chains, seed, problem)


def _stack(per_chain: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([chain[k] for chain in per_chain]) for k in per_chain[0]}


def group_parameter_draws(
    posterior: dict[str, np.ndarray], plans: list[ParameterPlan], num_groups: int
) -> np.ndarray:
    """(chain, draw, group, parameter): every group's parameter vector per draw."""
    columns = []
    for plan in plans:
        values = posterior[plan.name]
        if not plan.grouped:
            values = np.broadcast_to(values[..., None], (*values.shape, num_groups))
        columns.append(values)
    return np.stack(columns, axis=-1)


def pointwise_log_likelihood(
    lik: Likelihood,
    theta: np.ndarray,
    data: PreparedData,
    lapse: Lapse | None = None,
    share: np.ndarray | None = None,
) -> np.ndarray:
    """log p(row | its group's parameters) for every draw and row: what LOO needs,
    mixed with the lapse distribution at each draw's `p_outlier` where the model
    has lapses. Scored per group where the likelihood allows (the networks run once
    per draw and group, not once per draw and row), in batches of draws."""
    chains, draws = theta.shape[:2]
    flat = theta.reshape(chains * draws, *theta.shape[2:])
    x = torch.as_tensor(data.x, dtype=torch.float64)
    group_index = torch.as_tensor(data.group_index)
    out = np.empty((chains * draws, len(data.x)))
    with torch.no_grad():
        for batch in draw_batches(len(flat), len(data.x)):
            groups = torch.as_tensor(flat[batch], dtype=torch.float64)
            lp = lik.log_prob_grouped(groups, group_index, x)
            if lapse is not None:
                shares = torch.as_tensor(share.reshape(-1)[batch])
                lp = mix(lp, lapse.distribution.log_density, shares)
            out[batch] = lp.numpy()
    return out.reshape(chains, draws, len(data.x))


def warn_divergences(sample_stats: dict[str, np.ndarray], target_accept: float) -> int:
    """PyMC's warning: divergent transitions after tuning mean NUTS could not
    follow the posterior somewhere, and the draws may be biased there."""
    diverging = sample_stats.get("diverging")
    count = 0 if diverging is None else int(np.sum(diverging))
    if count:
        warnings.warn(
            f"{count} of {diverging.size} transitions diverged after tuning: the "
            "posterior may be explored badly where they sit (az.plot_pair(idata, "
            f"divergences=True)). Raise target_accept above {target_accept:g} "
            "(e.g. 0.95; --target-accept 0.95), or simplify the model",
            RuntimeWarning,
            stacklevel=3,
        )
    return count


def fast_guess_hints(simulator: Simulator) -> dict[tuple[str, str], str]:
    """What a shift parameter at its lower bound usually means: fast guesses."""
    return {
        (obs.shift, "lower"): (
            f"rows with a very small {obs.name!r} (fast guesses) pull "
            f"{obs.shift!r} down: add a lapse component (p_outlier=0.05, "
            "--p-outlier 0.05) or drop those rows"
        )
        for obs in simulator.observables
        if obs.shift is not None
    }


def warn_at_domain_edges(
    posterior: dict[str, np.ndarray],
    plans: list[ParameterPlan],
    data: PreparedData,
    hints: dict[tuple[str, str], str] | None = None,
) -> list[str]:
    """Warn when more than 1% of a parameter's draws sit within 1% of the box width
    of a bound: the data want values the estimator was not trained on, unless
    `hints` (per parameter and side) know the likelier cause."""
    messages = []
    for plan in plans:
        p = plan.parameter
        values = posterior[plan.name]
        values = values.reshape(-1, values.shape[-1] if plan.grouped else 1)
        labels = data.group_labels if plan.grouped else np.array(["(pooled)"])
        margin = EDGE_FRACTION * p.width
        for side, near in (
            ("lower", values <= p.lower + margin),
            ("upper", values >= p.upper - margin),
        ):
            share = near.mean(axis=0)
            crowded = np.flatnonzero(share > EDGE_FRACTION)
            if not len(crowded):
                continue
            where = ", ".join(f"{labels[i]} ({share[i]:.0%})" for i in crowded[:5])
            bound = p.lower if side == "lower" else p.upper
            advice = (hints or {}).get((p.name, side)) or (
                "the data want values the estimator was not trained on. Retrain on "
                "a wider domain, or check the data and the model"
            )
            message = (
                f"posterior draws of {p.name!r} pile up at the {side} bound {bound:g} "
                f"of the training domain [{p.lower:g}, {p.upper:g}] for {where}: "
                + advice
            )
            warnings.warn(message, DomainWarning, stacklevel=3)
            messages.append(message)
    return messages
