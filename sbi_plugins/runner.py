"""The one fit path: data -> the hierarchical model -> an inference method ->
InferenceData."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sbi_plugins.contract import PopulationPrior, Simulator
from sbi_plugins.data import (
    PreparedData,
    as_table,
    condition_columns,
    prepare_data,
)
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.estimators.refinement import (
    Refinement,
    RefineRequest,
    estimator_check,
    load_refined,
    refine_and_refit,
    refined_cache_path,
    refinement_plan,
    save_refined,
    warn_if_flagged,
)
from sbi_plugins.estimators.resolve import resolve_estimator
from sbi_plugins.inference.base import MASS_MATRICES, Settings, get_method
from sbi_plugins.inference.centering import choose_centering, population_forms
from sbi_plugins.keywords import (
    check_counts,
    check_target_accept,
    refuse_swapped_arguments,
    refuse_unknown_keywords,
)
from sbi_plugins.likelihoods.distribution import Likelihood, check_observations
from sbi_plugins.likelihoods.lapse import Lapse, make_lapse, share_draws
from sbi_plugins.model.model import HierarchicalModel, build_model, plan_model
from sbi_plugins.model.support import check_explainable
from sbi_plugins.plugin.registry import get_simulator
from sbi_plugins.results.diagnostics import (
    fast_guess_hints,
    warn_at_domain_edges,
    warn_of_fast_guesses,
    warn_of_fast_rows,
)
from sbi_plugins.results.idata import build_inference_data
from sbi_plugins.results.pointwise import (
    check_log_likelihood_draws,
    pointwise_draws,
    pointwise_dtype,
    pointwise_log_likelihood,
)
from sbi_plugins.results.predictive import simulate_predictive
from sbi_plugins.versions import package_versions


def fit(
    data: pd.DataFrame | str | Path,
    simulator: str | Simulator | None = None,
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
    method: str = "nuts",
    prior_predictive: bool | int = False,
    refine: RefineRequest = "auto",
    log_likelihood: bool | str = True,
    log_likelihood_draws: bool | int = True,
    noncentered: bool | str = "auto",
    deadline: float | str | None = None,
    mass_matrix: str = "auto",
    **others: Any,
) -> az.InferenceData:
    """Fit a simulator's hierarchical model to data (NUTS by default).

    `pooling` is "complete", "none", "partial" or a dict per parameter. With
    `likelihood="exact"` the plugin's exact log-likelihood replaces the learned one
    in the very same model: the reference a neural fit is held to.

    `posterior_predictive`: True simulates one data set per draw, thinned evenly to
    at most 2 million simulated rows for large data; an int asks for that many draws
    per chain; False skips it. A predictive beyond 2 million rows is returned as
    dask arrays simulated batch by batch when read: `idata.to_netcdf` (the CLI's
    `--out`) streams it to disk without holding it whole.

    `formulas`, e.g. `{"v": "v ~ 1 + difficulty + (1|participant_id)"}`, give
    parameters regression formulas (see `sbi_plugins.model.formulas`); the others
    keep their pooling mode and its priors (a parameter's prior never depends on
    what the other parameters are given).

    `compile`: compile the model's potential with `torch.compile` before sampling
    (needs a C++ compiler; 5-40 s once, then each leapfrog step costs a fraction).
    None compiles when chains x (draws + tune) reaches 4000 (the default fit) and
    the data have at least 500 rows, or as the environment variable
    SBI_PLUGINS_COMPILE=0/1 says. The compiled potential is checked against
    Pyro's potential of the model at every chain's start before it is sampled.

    `p_outlier`: a lapse component for trials the simulator did not produce (fast
    guesses, attention lapses), with HSSM's semantics: each row is a mixture of the
    model and a lapse distribution (uniform over each column's observed range,
    choices uniform). A number fixes the share (e.g. 0.05), True estimates it with
    a Beta(2, 38) prior, a distribution on (0, 1) is its prior. See
    `sbi_plugins.likelihoods.lapse`.

    `method`: the inference method ("nuts"; see `sbi_plugins.inference.base`).

    `prior_predictive`: True (500 draws) or a number of draws from the prior, with a
    data set simulated at each by the simulator, as ArviZ's `prior` and
    `prior_predictive` groups: what the priors imply before the data speak.

    `refine`: fine-tune a copy of the estimator on simulations at this fit's own
    posterior and refit, round after round, until the posterior moves less than
    0.2 sd beyond Monte Carlo noise (`sbi_plugins.estimators.refinement`). "auto"
    refines neural fits of at least 2,000 rows, where an amortized estimator's
    error grows into the posterior; True always, False (or 0) never, an int caps
    the rounds, a `Refinement` sets simulations, epochs and tolerance. The refined
    estimator is cached by data and model and reused by the same fit; attrs
    record each round's shift and cost, and `estimator_check` the verdict.

    `log_likelihood`: the pointwise log-likelihood (one value per draw and data row,
    what `az.loo` and `az.compare` read) in float32 (True, the default: half the
    size, and PSIS-LOO agrees with float64 to well under 0.1 elpd), "float64", or
    False to leave the group out (large data you will not compare).

    `log_likelihood_draws`: True keeps every draw's pointwise log-likelihood up to
    50 million values (draws x rows: 200 MB in float32, the 1000 x 4 draws of
    12,500 rows) and as many evenly spaced draws of each chain as fit beyond (a
    37,200-row fit keeps 336 per chain: its elpd's Monte Carlo sd is 0.7, its LOO
    se 171);
    a number keeps that many draws per chain (`draws`: all of them). The group's
    `draw` coordinate names the draws kept, and its `thinned` attr says so. With
    both defaults, and a predictive of at least 2,000 draws in all, the two groups
    keep the same draws (what `az.loo_pit` pairs); a thinner predictive keeps a
    subset of the log-likelihood's (`sbi_plugins.results.pointwise.pointwise_draws`).

    `noncentered`: "auto" (the default) chooses each normal population's form
    from the posterior's mode: centered (the groups' values sampled directly)
    where every group's data pin its value down, which is faster there, else
    non-centered (`sbi_plugins.inference.centering`); True samples through
    standard-normal offsets per group, as Bambi and HSSM do; False directly. The
    posterior is the same; attrs record the form. The groups' values are in the
    posterior either way.

    `deadline`: the time (seconds), or the name of a column of per-trial times
    (HSSM's `deadline`), after which a trial ended without a response. Rows whose
    response time is empty or -999 are then omissions, scored by the probability of
    no decision by their deadline (`sbi_plugins.likelihoods.omission`); the
    predictive censors simulated trials at the same deadlines.

    Any other keyword is refused before any work, naming its equivalent here
    when it is HSSM's, HDDM's or PyMC's (`include=` -> `formulas=`) or the closest
    name `fit` takes (`sbi_plugins.keywords`).

    `mass_matrix`: NUTS's, "auto" (the default), "diagonal" (Stan's and PyMC's
    default) or "dense" (PyMC's `init="jitter+adapt_full"`): a full covariance
    adapted in warm-up, for posteriors where a pooled parameter moves with many
    groups' values. "auto" takes it where every population is centered and the
    warm-up's last window (500 draws of the default 1,000) has 5 draws per
    dimension, where it was measured to pay (`sbi_plugins.inference.mass`);
    attrs record which ran.
    """
    refuse_unknown_keywords(fit, others)
    refuse_swapped_arguments("fit", data, simulator)
    check_counts(draws=draws, tune=tune, chains=chains, seed=seed)
    check_target_accept(target_accept)
    draws, tune, chains = int(draws), int(tune), int(chains)
    seed = None if seed is None else int(seed)
    sim = get_simulator(simulator)
    if likelihood not in ("neural", "exact"):
        hssm = {"analytical": "exact", "approx_differentiable": "neural"}
        hint = (
            f" (HSSM's {likelihood!r} is {hssm[likelihood]!r})"
            if likelihood in hssm
            else ""
        )
        raise SbiPluginsError(
            f"likelihood must be 'neural' or 'exact', got {likelihood!r}{hint}"
        )
    if min(draws, chains) < 1 or tune < 0:
        raise SbiPluginsError("draws and chains must be at least 1, tune at least 0")
    if cores is not None and cores < 0:
        raise SbiPluginsError(
            f"cores must be at least 1 (or left out for one per core), got {cores}"
        )
    inference = get_method(method)
    log_likelihood_dtype = pointwise_dtype(log_likelihood)
    check_log_likelihood_draws(log_likelihood_draws)
    refinement_plan(refine, 0, None)  # a bad request is refused before any work
    prior_draws = prior_predictive_draws(prior_predictive)
    frame = as_table(data)
    prepared = prepare_data(frame, sim, group, deadline)
    lapse = make_lapse(p_outlier, sim, prepared.x)
    if mass_matrix not in MASS_MATRICES:
        raise SbiPluginsError(
            f"mass_matrix must be one of {', '.join(MASS_MATRICES)}, got "
            f"{mass_matrix!r}"
        )
    if noncentered not in (True, False, "auto"):
        raise SbiPluginsError(
            f"noncentered must be True, False or 'auto', got {noncentered!r}"
        )
    parameters = plan_model(
        sim, frame, group, pooling, formulas, priors, noncentered is not False
    )
    # the data's own checks first: no estimator is trained for data that cannot fit
    decided_x = prepared.x[prepared.decided]
    decided_labels = prepared.row_labels[prepared.decided]
    check_observations(sim, None, decided_x, decided_labels)
    check_explainable(sim, decided_x, decided_labels, lapse is not None)
    if likelihood == "exact":
        lik = Likelihood(sim)
    else:
        lik = Likelihood(sim, resolve_estimator(sim, estimator, progress=progress))
    if not lik.exact:
        check_observations(sim, lik.estimator, decided_x, decided_labels)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    curvature = {}
    if noncentered == "auto":
        parameters, curvature = choose_centering(
            parameters, lambda plans: build_model(plans, prepared, lik, lapse)
        )
    settings = Settings(
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        cores=cores,
        progress=progress,
        target_accept=target_accept,
        compile=compile,
        mass_matrix=mass_matrix,
    )

    conditions = condition_columns(frame, sim, group)
    if progress:
        tqdm.write(
            fit_plan(
                sim, conditions, prepared, parameters, settings, method, deadline, lapse
            ),
            file=sys.stderr,
        )

    if lapse is None:
        warn_of_fast_rows(sim, prepared)

    def sample(estimator: TrainedEstimator | None) -> Sampled:
        current = lik if estimator is None else Likelihood(sim, estimator)
        model, model_kwargs = build_model(parameters, prepared, current, lapse)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = inference.run(model, model_kwargs, prepared, settings)
        result.posterior = model.complete_draws(result.posterior)
        return Sampled(current, model, result, caught)

    plan = refinement_plan(refine, len(prepared.x), lik.estimator)
    sampled, record, reused = _sample_refined(
        sim,
        sample,
        plan,
        lik.estimator,
        build_model(parameters, prepared, lik, lapse)[0].attrs()
        | deadline_attrs(deadline, prepared),
        prepared,
        seed,
        cores,
        progress,
    )
    lik, model, result = sampled.likelihood, sampled.model, sampled.result
    raw = result.posterior
    theta = model.cell_parameter_draws(raw)
    shape = theta.shape[:2]
    share = share_draws(lapse, raw, shape)
    # a shift piled at its bound (fast guesses) is the cause, r-hat its symptom:
    # the cause is said first, then the kept fit's (not the rounds') warnings
    hints = {} if lapse is not None else fast_guess_hints(sim, bool(sampled.warnings))
    edge_warnings = warn_at_domain_edges(model, raw, theta, prepared, hints)
    cells = dataclasses.replace(prepared, group_index=model.cells.index)
    if lapse is None:
        edge_warnings += warn_of_fast_guesses(
            sim, model, theta, cells, bool(sampled.warnings)
        )
    for caught in sampled.warnings:
        warnings.warn(caught.message, stacklevel=2)
    check = estimator_check(
        record,
        exact=lik.exact,
        num_rows=len(prepared.x),
        estimator=lik.estimator,
        reused=reused,
    )
    warn_if_flagged(check)
    selected, kept = pointwise_draws(
        posterior_predictive, log_likelihood_draws, shape, len(prepared.x)
    )
    posterior, dims, coords = model.posterior_variables(raw)
    prior, simulated_prior = _prior_predictive(
        model, sim, cells, lapse, prior_draws, seed, cores, progress
    )
    attrs = {
        "simulator": sim.name,
        "simulator_version": sim.version,
        "likelihood": likelihood,
        "estimator_checksum": "" if lik.exact else lik.estimator.checksum,
        "estimator_source": "" if lik.exact else lik.estimator.source,
        **model.attrs(),
        "group": prepared.group or "",
        "seed": seed,
        **result.attrs,
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "versions": json.dumps(package_versions()),
        "domain_warnings": json.dumps(edge_warnings),
        "p_outlier": "" if lapse is None else lapse.describe(),
        **deadline_attrs(deadline, prepared),
        "estimator_check": json.dumps(check, sort_keys=True),
        "refinement": "" if record is None else json.dumps(record, sort_keys=True),
        "populations": json.dumps(population_forms(parameters, curvature)),
    }
    return build_inference_data(
        posterior=posterior,
        sample_stats=result.sample_stats,
        log_likelihood=None
        if log_likelihood_dtype is None
        else pointwise_log_likelihood(
            lik,
            theta[:, kept],
            prepared.x,
            model.cells.index,
            lapse,
            None if share is None else share[:, kept],
            dtype=log_likelihood_dtype,
            omissions=model.omissions,
        ),
        log_likelihood_draw_index=kept,
        posterior_predictive=simulate_predictive(
            sim,
            theta,
            cells,
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
        attrs=attrs,
        dims=dims,
        coords=coords,
        prior=prior,
        prior_predictive=simulated_prior,
        conditions=conditions,
    )


def fit_plan(
    simulator: Simulator,
    conditions: Mapping[str, np.ndarray],
    prepared: PreparedData,
    parameters: list,
    settings: Settings,
    method: str,
    deadline: float | str | None = None,
    lapse: Lapse | None = None,
) -> str:
    """One line said before a fit, as PyMC's "Sampling 4 chains for 1_000 tune and
    1_000 draw iterations": the data, each parameter's mode, lapses, the sampler's
    design, and the data's columns no parameter uses (a condition left out)."""
    by_mode: dict[str, list[str]] = {}
    for p in parameters:
        by_mode.setdefault(p.pooling, []).append(p.name)
    group = prepared.group or "group"
    modes = {
        "partial": f"by {group} around a population",
        "none": f"by {group}, unpooled",
        "complete": "pooled",
        "formula": "by formula",
    }
    said = "; ".join(
        f"{', '.join(names)} {modes.get(mode, mode)}" for mode, names in by_mode.items()
    )
    groups = f" in {prepared.num_groups} groups ({group})" if prepared.group else ""
    sampler = (
        f"NUTS, {settings.chains} chain{'s' if settings.chains > 1 else ''} x "
        f"({settings.tune} tuning + "
        f"{settings.draws} draws)"
        if method == "nuts"
        else f"method {method!r}"
    )
    lapses = f"; lapses, {lapse.describe_share()}" if lapse is not None else ""
    line = (
        f"{simulator.name}: {len(prepared.x):,} rows{groups}; {said}{lapses}; {sampler}"
    )
    formulas = " ".join(getattr(p, "formula", "") for p in parameters)
    unused = [
        name
        for name in conditions
        if name != deadline and not re.search(rf"\b{re.escape(name)}\b", formulas)
    ]
    if unused:
        word = "column" if len(unused) == 1 else "columns"
        line += f"; not in the model: {word} {', '.join(map(repr, unused))}"
    return line


def deadline_attrs(
    deadline: float | str | None, prepared: PreparedData
) -> dict[str, Any]:
    """What attrs record of a deadline: the seconds or the column, and how many
    rows are omissions."""
    if deadline is None:
        return {"deadline": ""}
    described = f"column {deadline!r}" if isinstance(deadline, str) else f"{deadline:g}"
    return {"deadline": described, "omissions": int(prepared.omitted.sum())}


@dataclasses.dataclass
class Sampled:
    """One inference run: the likelihood it used, its model and its result."""

    likelihood: Likelihood
    model: HierarchicalModel
    result: Any
    warnings: list[warnings.WarningMessage]

    def cell_draws(self) -> np.ndarray:
        return self.model.cell_parameter_draws(self.result.posterior)

    def variables(self) -> dict[str, np.ndarray]:
        return self.model.posterior_variables(self.result.posterior)[0]


def _sample_refined(
    simulator: Simulator,
    sample: Callable[[TrainedEstimator | None], Sampled],
    plan: Refinement | None,
    amortized: TrainedEstimator | None,
    model_attrs: dict[str, Any],
    prepared: PreparedData,
    seed: int,
    cores: int | None,
    progress: bool,
) -> tuple[Sampled, dict[str, Any] | None, bool]:
    """The fit with the resolved estimator; with a refinement plan, the cached
    refined estimator's fit or the refinement rounds' last fit. Returns the fit,
    the refinement record (None without one) and whether it came from the cache."""
    if plan is None:
        return sample(None), None, False
    path = refined_cache_path(
        amortized, prepared.x, prepared.group_index, model_attrs, plan
    )
    cached = load_refined(path, simulator)
    if cached is not None:
        return sample(cached[0]), cached[1], True
    first = sample(None)
    estimator, fit, record = refine_and_refit(
        simulator,
        amortized,
        first,
        sample,
        Sampled.cell_draws,
        Sampled.variables,
        plan,
        seed,
        workers=cores,
        progress=progress,
    )
    save_refined(path, estimator, record)
    return fit, record, False


PRIOR_PREDICTIVE_DRAWS = 500
"""Prior draws for `prior_predictive=True`, as PyMC's `sample_prior_predictive`."""


def prior_predictive_draws(request: bool | int | None) -> int:
    """How many prior draws `prior_predictive` asks for (0: none), checked before
    any work."""
    if request is None or request is False:
        return 0
    if request is True:
        return PRIOR_PREDICTIVE_DRAWS
    if isinstance(request, int) and request >= 0:
        return request
    raise SbiPluginsError(
        f"prior_predictive must be True, False or a number of draws (0 for none), "
        f"got {request!r}"
    )


def _prior_predictive(
    model: HierarchicalModel,
    simulator: Simulator,
    cells: PreparedData,
    lapse: Lapse | None,
    count: int,
    seed: int,
    cores: int | None,
    progress: bool,
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
    """`count` draws from the model's prior (named as the posterior's) and a data
    set simulated at each, from seed streams of their own; (None, None) for 0."""
    if not count:
        return None, None
    streams = np.random.SeedSequence([seed, 7]).generate_state(2)
    raw = model.prior_draws(count, int(streams[0]))
    theta = model.cell_parameter_draws(raw)
    share = share_draws(lapse, raw, theta.shape[:2])
    simulated = simulate_predictive(
        simulator,
        theta,
        cells,
        int(streams[1]),
        np.arange(count),
        workers=cores,
        progress=progress,
        lapse=lapse,
        share=share,
        label="prior predictive",
    )
    return model.posterior_variables(raw)[0], simulated
