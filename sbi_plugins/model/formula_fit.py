"""The formula path of `fit`: formulas -> FormulaModel -> NUTS -> InferenceData.

Kept apart from `runner` so that the pooling path stays as it was; the two share the
sampler, the pointwise log-likelihood, the predictive and the InferenceData builder
(with each row's cell in place of its group).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import torch

from sbi_plugins.contract import PopulationPrior, Simulator
from sbi_plugins.data import PreparedData
from sbi_plugins.inference.laplace import laplace_start
from sbi_plugins.inference.nuts import run_nuts
from sbi_plugins.inference.starts import StartProblem, chain_starts, shift_ceilings
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import Lapse, share_draws
from sbi_plugins.model.formulas import (
    FormulaModel,
    FormulaPlan,
    cell_parameter_draws,
    named_posterior,
    normalize_formulas,
    plan_formulas,
)
from sbi_plugins.model.pooling import normalize_pooling, plan_parameters
from sbi_plugins.results.idata import build_inference_data, log_likelihood_name
from sbi_plugins.versions import package_versions


def plan_from_arguments(
    frame: pd.DataFrame,
    simulator: Simulator,
    formulas: Mapping[str, str] | list[str] | str,
    pooling: str | Mapping[str, str],
    group: str | None,
    priors: Mapping[str, PopulationPrior | str] | None,
) -> FormulaPlan:
    """Check and parse everything before any estimator is loaded or trained.
    Parameters without a formula follow the pooling shorthand (translated to its
    formula); without `group`, a pooling mode given as one string means one common
    value."""
    parsed = normalize_formulas(formulas, simulator)
    if group is None and isinstance(pooling, str):
        pooling = "complete"
    modes = normalize_pooling(pooling, simulator, group is not None)
    # the plugin's (or the user's) population priors centre the intercepts
    resolved = {
        p.name: p.prior
        for p in plan_parameters(
            simulator, dict.fromkeys(simulator.parameter_names, "complete"), priors
        )
    }
    return plan_formulas(simulator, frame, parsed, modes, group, resolved)


def fit_formula_model(
    plan: FormulaPlan,
    simulator: Simulator,
    prepared: PreparedData,
    lik: Likelihood,
    *,
    sampler: dict[str, Any],
    seed: int,
    posterior_predictive: bool | int,
    lapse: Lapse | None = None,
) -> az.InferenceData:
    """Sample the formula model and assemble its InferenceData."""
    from sbi_plugins.results.predictive import predictive_draws, simulate_predictive
    from sbi_plugins.runner import _stack, pointwise_log_likelihood, warn_divergences

    site = log_likelihood_name(simulator)
    model_kwargs = {
        "x": torch.as_tensor(prepared.x, dtype=torch.float64),
        "cell_index": torch.as_tensor(plan.cell_index),
        "likelihood": lik,
        "site": site,
    }
    model = FormulaModel(plan, lapse)
    ceilings = shift_ceilings(
        simulator,
        prepared.x,
        np.zeros(len(prepared.x), dtype=np.int64),
        1,
        lapses=lapse is not None,
    )
    start = model.start({k: float(v[0]) for k, v in ceilings.items()})
    problem = StartProblem(
        lik,
        lambda values: torch.as_tensor(
            cell_parameter_draws({k: v.numpy() for k, v in values.items()}, plan)
        ),
        plan.cell_index,
        prepared.x,
        prepared.row_labels,
        np.array([f"of row {prepared.row_labels[r]}" for r in plan.cell_rows]),
        "the cells",
    )
    starts = chain_starts(model, model_kwargs, start, sampler["chains"], seed, problem)
    mode = laplace_start(model, model_kwargs, sampler["chains"], seed, init=start)
    inverse_mass = None
    if mode is not None:
        starts, inverse_mass = mode
    results = run_nuts(
        model,
        model_kwargs,
        seed=seed,
        starts=starts,
        inverse_mass=inverse_mass,
        **sampler,
    )
    raw = _stack([r.samples for r in results])
    sample_stats = _stack([r.stats for r in results])
    warn_divergences(sample_stats, sampler["target_accept"])
    theta = cell_parameter_draws(raw, plan)
    share = share_draws(lapse, raw, theta.shape[:2])
    cells = dataclasses.replace(prepared, group_index=plan.cell_index)
    chains, draws = theta.shape[:2]
    selected = predictive_draws(posterior_predictive, (chains, draws), len(prepared.x))
    edge_warnings = warn_at_domain_edges(theta, plan, prepared)
    posterior, dims, coords = named_posterior(raw, plan)
    attrs = {
        "simulator": simulator.name,
        "simulator_version": simulator.version,
        "likelihood": lik.name,
        "estimator_checksum": "" if lik.exact else lik.estimator.checksum,
        "estimator_source": "" if lik.exact else lik.estimator.source,
        "group": prepared.group or "",
        "seed": seed,
        "draws": sampler["draws"],
        "tune": sampler["tune"],
        "chains": sampler["chains"],
        "versions": json.dumps(package_versions()),
        "formulas": json.dumps(plan.describe()),
        "pooling": json.dumps({f.name: "formula" for f in plan.formulas}),
        "priors": json.dumps(describe_priors(plan)),
        "domain_warnings": json.dumps(edge_warnings),
        "p_outlier": "" if lapse is None else lapse.describe(),
    }
    return build_inference_data(
        posterior=posterior,
        sample_stats=sample_stats,
        log_likelihood=pointwise_log_likelihood(lik, theta, cells, lapse, share),
        posterior_predictive=simulate_predictive(
            simulator,
            theta,
            cells,
            seed,
            selected,
            workers=sampler["cores"],
            progress=sampler["progress"],
            lapse=lapse,
            share=share,
        ),
        predictive_draw_index=selected,
        data=prepared,
        simulator=simulator,
        plans=[],
        attrs=attrs,
        extra_dims=dims,
        extra_coords=coords,
    )


def describe_priors(plan: FormulaPlan) -> dict[str, str]:
    """Each coefficient's prior, on the link scale, for attrs."""
    out = {}
    for spec in plan.formulas:
        for t in spec.common:
            pairs = ", ".join(
                f"Normal({m:.3g}, {s:.3g})" for m, s in zip(t.loc, t.scale, strict=True)
            )
            out[spec.var(t.name)] = pairs
        for t in spec.group:
            out[f"{spec.var(t.name)}_sigma"] = "HalfNormal(1)"
        p = spec.parameter
        out[f"{p.name} (link)"] = (
            f"{p.lower:g} + {p.width:g} * sigmoid(linear predictor)"
        )
    return out


EDGE_FRACTION = 0.01


def warn_at_domain_edges(
    theta: np.ndarray, plan: FormulaPlan, data: PreparedData
) -> list[str]:
    """The pooling path's warning, per cell: trial-wise draws that crowd a bound of
    the box mean the data want values the estimator was not trained on."""
    from sbi_plugins.runner import warn_at_domain_edges as per_group

    labels = np.array([f"row {data.row_labels[r]}'s cell" for r in plan.cell_rows])
    plans = [
        SimpleNamespace(name=f.name, parameter=f.parameter, grouped=True)
        for f in plan.formulas
    ]
    posterior = {f.name: theta[..., j] for j, f in enumerate(plan.formulas)}
    cells = SimpleNamespace(group_labels=labels)
    return per_group(posterior, plans, cells)
