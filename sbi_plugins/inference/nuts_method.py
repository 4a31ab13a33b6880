"""NUTS behind the inference interface: starts from the data, a Laplace start for
regression models, the compiled potential for long fits, divergences and poor
mixing warned of."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sbi_plugins.inference.base import Draws, Settings, stack_chains
from sbi_plugins.inference.compile import compiled_potential, worth_compiling
from sbi_plugins.inference.laplace import laplace_start
from sbi_plugins.inference.mass import dense_pays
from sbi_plugins.inference.nuts import run_nuts
from sbi_plugins.inference.starts import chain_starts, start_problem
from sbi_plugins.model.pooling import ParameterPlan

if TYPE_CHECKING:
    from sbi_plugins.data import PreparedData
    from sbi_plugins.model.model import HierarchicalModel


class Nuts:
    """Pyro's NUTS, chains on the local fork pool (`sbi_plugins.inference.nuts`)."""

    name = "nuts"

    def run(
        self,
        model: HierarchicalModel,
        model_kwargs: Mapping[str, Any],
        data: PreparedData,
        settings: Settings,
    ) -> Draws:
        s = settings
        kwargs = dict(model_kwargs)
        start = model.start()
        problem = start_problem(model, kwargs, data)
        starts = chain_starts(model, kwargs, start, s.chains, s.seed, problem)
        inverse_mass = None
        search = laplace_search(model)
        preset = search is not None
        dense = dense_pays(
            s.mass_matrix,
            dims=sum(v.numel() for v in start.values()),
            tune=s.tune,
            preset_start=preset,
        )
        mode = None
        if search is not None:  # its mode, carried over where it is another model
            through = None if search is model else (search, search.with_derived)
            init = search.start() if through else start
            mode = laplace_start(model, kwargs, s.chains, s.seed, init, through)
        if mode is not None:
            starts, inverse_mass = mode
        potential = None
        if worth_compiling(s.compile, s.chains, s.draws + s.tune, len(data.x)):
            if s.progress:
                tqdm.write("compiling the model's potential (cached for later fits)")
            potential = compiled_potential(model, kwargs, starts)
        results = run_nuts(
            model,
            kwargs,
            draws=s.draws,
            tune=s.tune,
            chains=s.chains,
            seed=s.seed,
            progress=s.progress,
            cores=s.cores,
            target_accept=s.target_accept,
            potential=potential,
            starts=starts,
            inverse_mass=inverse_mass,
            dense_mass=dense,
        )
        sample_stats = stack_chains([r.stats for r in results])
        samples = stack_chains([r.samples for r in results])
        warn_divergences(sample_stats, s.target_accept)
        variables, dims, coords = model.posterior_variables(
            model.complete_draws(samples)
        )
        # the groups' labels, as the result's coordinates will name them
        coords = {data.group_dim: data.group_labels, **coords}
        warn_poor_mixing(variables, dims, coords)
        return Draws(
            samples,
            sample_stats,
            # the same seed gives the same draws only with the same setting
            {
                "inference_method": self.name,
                "compiled": int(potential is not None),
                "mass_matrix": "dense" if dense else "diagonal",
            },
        )


def laplace_search(model: HierarchicalModel) -> HierarchicalModel | None:
    """Where NUTS starts at the mode with the Laplace scales
    (`sbi_plugins.inference.laplace`), the model whose mode is searched; None
    where it starts from the data's values with a unit mass matrix.

    Formula coefficients differ in scale by orders of magnitude (a pooled
    intercept over thousands of trials vs a subject's offset), and so do a
    non-centered population's hyperparameters and offsets once each group has a
    hundred trials: with a unit mass matrix, NUTS's first adaptation window runs
    trees of hundreds of steps at a tiny step size. So such models start at their
    mode. A centered normal population's joint mode lies at sigma -> 0: beside
    non-centered ones (or a formula), the mode is searched with it non-centered
    and carried over. Models whose populations are all centered start from the
    data's values, where "auto" adapts a dense matrix; so do those with a
    population the offsets cannot carry (gamma)."""
    search = model.with_normal_populations_noncentered()
    plans = [p for p in search.parameters if isinstance(p, ParameterPlan)]
    if any(p.pooling == "partial" and not p.noncentered for p in plans):
        return None
    original = [p for p in model.parameters if isinstance(p, ParameterPlan)]
    if model.has_formulas or any(p.noncentered for p in original):
        return search
    return None


def warn_divergences(sample_stats: dict[str, np.ndarray], target_accept: float) -> int:
    """PyMC's warning: divergent transitions after tuning mean NUTS could not
    follow the posterior somewhere, and the draws may be biased there."""
    diverging = sample_stats.get("diverging")
    count = 0 if diverging is None else int(np.sum(diverging))
    if count:
        higher = 0.95 if target_accept < 0.95 else 0.99
        remedy = (
            f"Raise target_accept above {target_accept:g} (e.g. {higher:g}; "
            f"--target-accept {higher:g}), or simplify the model"
            if target_accept < 0.99
            else "Simplify the model (fewer partially pooled parameters, or "
            "pooling='complete' for those the data say little about)"
        )
        warnings.warn(
            f"{count} of {diverging.size} transitions diverged after tuning: the "
            "posterior may be explored badly where they sit (az.plot_pair(idata, "
            f"divergences=True)). {remedy}",
            RuntimeWarning,
            stacklevel=4,
        )
    return count


RHAT_LIMIT = 1.01
"""ArviZ's and PyMC's threshold: above it the chains have not mixed."""

ESS_PER_CHAIN = 100
"""PyMC's floor on bulk ESS per chain: below it r-hat and ESS are unreliable."""


def warn_poor_mixing(
    samples: Mapping[str, np.ndarray],
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
) -> list[str]:
    """PyMC's warnings after sampling: r-hat above 1.01 (the chains disagree) or
    bulk ESS under 100 per chain (too few independent draws to trust the
    estimates), naming the worst sites and what to do. `samples` are
    `(chain, draw, ...)`."""
    import arviz as az

    chains, draws = next(iter(samples.values())).shape[:2]
    if draws < 4:  # ArviZ's estimators need a few draws per chain
        return []
    try:
        dataset = az.convert_to_dataset(dict(samples), dims=dims, coords=coords)
    except (ValueError, KeyError):  # a warning never stops a fit: positions then
        dataset = az.convert_to_dataset(dict(samples))
    with np.errstate(invalid="ignore", divide="ignore"):  # constant sites: NaN
        rhat = _flat(az.rhat(dataset)) if chains > 1 else {}
        ess = _flat(az.ess(dataset, method="bulk"))
    messages = []
    bad = {k: v for k, v in rhat.items() if v > RHAT_LIMIT}
    if bad:
        messages.append(
            f"r-hat is above {RHAT_LIMIT} for {len(bad)} of {len(rhat)} "
            f"values ({_worst(bad, reverse=True, digits='.3f')}): the chains have not "
            "mixed, and the estimates may be wrong"
        )
    floor = ESS_PER_CHAIN * chains
    low = {k: v for k, v in ess.items() if v < floor}
    if low:
        messages.append(
            f"bulk ESS is below {ESS_PER_CHAIN} per chain ({floor} for {chains} "
            f"chain{'s' if chains > 1 else ''}) for {len(low)} of {len(ess)} values "
            f"({_worst(low, reverse=False, digits='.0f')}): too few independent "
            "draws for reliable estimates and r-hat"
        )
    if messages:
        longer = max(1000, 2 * draws)
        warnings.warn(
            "; ".join(messages)
            + f". Run longer (draws={longer}, tune={longer}, or more; --draws "
            f"{longer} --tune {longer} on the command line), with 4 chains; see "
            "az.summary(idata) and az.plot_trace(idata). Divergences or parameters "
            "piled at a bound often share the cause",
            RuntimeWarning,
            stacklevel=4,
        )
    return messages


def _flat(dataset: Any) -> dict[str, float]:
    """ArviZ's per-variable statistic -> {'t[s3]': value}, each site labelled by
    ArviZ's own labeller, as `az.summary` labels it; NaNs (constant sites) out."""
    from arviz.labels import BaseLabeller
    from arviz.sel_utils import xarray_var_iter

    label = BaseLabeller().make_label_flat
    return {
        label(name, sel, isel): float(value)
        for name, sel, isel, value in xarray_var_iter(dataset, combined=True)
        if np.isfinite(value)
    }


def _worst(
    values: Mapping[str, float], reverse: bool, digits: str, limit: int = 3
) -> str:
    """The `limit` worst sites, 'worst t[0] 1.114, a[2] 1.053': r-hat to three
    decimals, so that one above 1.01 never reads as 1.01."""
    ranked = sorted(values.items(), key=lambda kv: kv[1], reverse=reverse)[:limit]
    return "worst " + ", ".join(f"{k} {v:{digits}}" for k, v in ranked)
