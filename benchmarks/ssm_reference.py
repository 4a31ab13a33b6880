"""ssm models with a reference density: the shipped neural estimator against the
reference (`likelihood="exact"`), side by side on one data set per model.

    python benchmarks/ssm_reference.py [ddm_sdv full_ddm] [--subjects 10 --trials 100]
                                       [--draws 1000 --tune 1000 --chains 4]
                                       [--likelihoods neural refined exact reweighted]
                                       [--estimator FILE]

Data as in `ssm_fits.py`: `simulate_dataset` (seed 0), `v` and `a` with a
population, the other parameters pooled completely at one true value (`t` 0.6
where the model has onset variability, see `LATE_ONSET`). Both fits
share the sampler seed and settings. Prints, for every subject-level and pooled
parameter, the gap |mean neural - mean exact| in exact posterior sd and the sd
ratio (neural / exact), then each fit's wall time (sampling only: no posterior
predictive or pointwise log-likelihood) and sampler health and the worst gap
(target: under 0.3 sd everywhere, issue 19). `full_ddm`'s exact fit is slow: its
quadrature costs about 5 times the neural estimator per gradient, some 6 s per
draw on two shared cores (docs/ssm.md); start it with few draws.

`reweighted` stands in for that fit: each learned fit's draws (neural, refined),
importance-weighted by the reference's likelihood over the learned one's
(Pareto-smoothed, Vehtari et al. 2024), are draws of the reference posterior as
long as Pareto k stays below 0.7. It needs one reference log-density per draw
and row, no gradient and no
sampling. Run it beside `exact` (on `ddm_sdv`) to see the two agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import arviz as az
import pandas as pd
from sbi_plugins_ssm import simulate_dataset
from ssm_fits import common, pooling_for

import sbi_plugins

LATE_ONSET = {"t": (0.6, 0.0)}
"""Common onset of models with onset variability (`st`), as measured in
docs/ssm.md. It was needed when the start kept `t` below the fastest RT only
through `rt`'s shift, which these models do not have: the exact density (zero
before `t - st`) then failed to start on RTs under 0.32 s. Their `rt` now says
`start_below="t"`, so any onset starts."""

TARGET = 0.3
"""Largest acceptable gap between the posterior means, in exact posterior sd."""


def fit(trials, model: str, pooling, likelihood: str, args) -> tuple:
    """`likelihood` "neural" (the estimator as shipped), "refined" (the same,
    refined at this fit's posterior until it stops moving) or "exact"."""
    start = time.perf_counter()
    idata = sbi_plugins.fit(
        trials,
        model,
        group="participant_id",
        pooling=pooling,
        likelihood="exact" if likelihood == "exact" else "neural",
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=args.seed,
        progress=False,
        refine=likelihood == "refined",
        estimator=args.estimator if likelihood != "exact" else None,
        posterior_predictive=False,  # the sampler's cost alone, for both
        log_likelihood="reweighted" in args.likelihoods,  # its weights need them
    )
    return idata, time.perf_counter() - start


def agreement(exact, neural, names: list[str]) -> pd.DataFrame:
    """Per scalar (subject-level values one row each): means, sds, gap and its
    Monte Carlo standard error, sd ratio."""
    e = az.summary(exact, var_names=names, round_to="none")
    n = az.summary(neural, var_names=names, round_to="none")
    return pd.DataFrame(
        {
            "mean exact": e["mean"],
            "mean neural": n["mean"],
            "sd exact": e["sd"],
            "gap (sd)": (n["mean"] - e["mean"]).abs() / e["sd"],
            # the gap's own Monte Carlo error: both means' MCSE, in exact sd
            "mcse (sd)": (n["mcse_mean"] ** 2 + e["mcse_mean"] ** 2) ** 0.5 / e["sd"],
            "sd ratio": n["sd"] / e["sd"],
        }
    )


def reweighted(
    neural, trials, simulator, names: list[str]
) -> tuple[pd.DataFrame, float]:
    """The neural draws importance-weighted to the reference posterior: per scalar
    its weighted mean, sd and Monte Carlo error (sd over the weights' effective
    count), and the weights' Pareto k."""
    import numpy as np
    import torch

    posterior = neural.posterior.stack(sample=("chain", "draw"))
    groups = trials["participant_id"].to_numpy()
    columns = []
    for p in simulator.parameters:
        values = posterior[p.name]
        if "participant_id" in values.dims:
            position = {g: i for i, g in enumerate(values["participant_id"].values)}
            rows = np.array([position[g] for g in groups])
            columns.append(values.transpose("sample", "participant_id").values[:, rows])
        else:
            columns.append(np.repeat(values.values[:, None], len(groups), axis=1))
    theta = torch.as_tensor(np.stack(columns, -1), dtype=torch.float64)
    x = torch.as_tensor(trials[list(simulator.observable_names)].to_numpy(float))
    reference = torch.cat(
        [simulator.log_likelihood(chunk, x).sum(-1) for chunk in torch.split(theta, 20)]
    ).numpy()
    pointwise = neural.log_likelihood.stack(sample=("chain", "draw"))
    pointwise = pointwise[next(iter(pointwise.data_vars))].astype("float64")
    learned = pointwise.sum([d for d in pointwise.dims if d != "sample"]).values
    log_weights, k = az.psislw(reference - learned)
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    count = 1.0 / float((weights**2).sum())
    rows = {}
    for name in names:
        values = posterior[name]
        other = [d for d in values.dims if d != "sample"]
        flat = values.transpose("sample", *other).values.reshape(len(weights), -1)
        labels = (
            [name]
            if not other
            else [f"{name}[{label}]" for label in values[other[0]].values]
        )
        mean = weights @ flat
        sd = np.sqrt(weights @ (flat - mean) ** 2)
        for label, m, d in zip(labels, mean, sd, strict=True):
            rows[label] = {"mean": m, "sd": d, "mcse_mean": d / count**0.5}
    print(
        f"reweighted: Pareto k {float(k):.2f} (reliable below 0.7), effective "
        f"draws {count:.0f} of {len(weights)}",
        flush=True,
    )
    return pd.DataFrame(rows).T, float(k)


def agreement_with(reference: pd.DataFrame, learned, names: list[str]) -> pd.DataFrame:
    """`agreement` against a table of means, sds and Monte Carlo errors."""
    n = az.summary(learned, var_names=names, round_to="none")
    e = reference.loc[n.index]
    return pd.DataFrame(
        {
            "mean reference": e["mean"],
            "mean neural": n["mean"],
            "sd reference": e["sd"],
            "gap (sd)": (n["mean"] - e["mean"]).abs() / e["sd"],
            "mcse (sd)": (n["mcse_mean"] ** 2 + e["mcse_mean"] ** 2) ** 0.5 / e["sd"],
            "sd ratio": n["sd"] / e["sd"],
        }
    )


def compare(model: str, args) -> float:
    """Fit `model` both ways, print the table and times; return the worst gap."""
    simulator = sbi_plugins.get_simulator(model)
    pooling = pooling_for(simulator, "va")
    population = common(simulator, pooling)
    if "st" in pooling:
        population.update(LATE_ONSET)
    trials, _ = simulate_dataset(
        model, args.subjects, args.trials, seed=0, population=population
    )
    names = [p.name for p in simulator.parameters]
    names += [
        f"{p}_{h}"
        for p, m in pooling.items()
        if m == "partial"
        for h in ("mu", "sigma")
    ]
    fits = {}
    for likelihood in args.likelihoods:
        if likelihood == "reweighted":
            continue
        fits[likelihood], seconds = fit(trials, model, pooling, likelihood, args)
        summary = az.summary(fits[likelihood], var_names=names, round_to="none")
        stats = fits[likelihood].sample_stats
        print(
            f"{model} {likelihood:>6}: {seconds:7.1f} s wall, min bulk ESS "
            f"{summary['ess_bulk'].min():.0f}, max r-hat {summary['r_hat'].max():.3f}, "
            f"divergences {int(stats['diverging'].sum())}, mean leapfrog steps "
            f"{float(stats['n_steps'].mean()):.1f}",
            flush=True,
        )
        refinement = fits[likelihood].attrs.get("refinement")
        if refinement:
            print(f"  refinement: {refinement}", flush=True)
    learned_fits = [n for n in ("neural", "refined") if n in fits]
    for learned in learned_fits if "reweighted" in args.likelihoods else []:
        start = time.perf_counter()
        table, k = reweighted(fits[learned], trials, simulator, names)
        print(f"  weighting took {time.perf_counter() - start:.1f} s", flush=True)
        if "exact" in fits:
            check = agreement_with(table, fits["exact"], names)
            print(
                f"{learned} reweighted against exact: largest mean gap "
                f"{check['gap (sd)'].max():.3f} sd at {check['gap (sd)'].idxmax()}, "
                f"sd ratio {check['sd ratio'].min():.2f} - "
                f"{check['sd ratio'].max():.2f}",
                flush=True,
            )
        gaps = agreement_with(table, fits[learned], names)
        print(f"{learned} against its reweighting:")
        print(gaps.to_string(float_format=lambda v: f"{v:.3f}"))
        where = gaps["gap (sd)"].idxmax()
        print(
            f"{learned} against its reweighting (k {k:.2f}): worst gap "
            f"{gaps.loc[where, 'gap (sd)']:.3f} sd (MC se "
            f"{gaps.loc[where, 'mcse (sd)']:.3f}) at {where}; sd ratio "
            f"{gaps['sd ratio'].min():.2f} - {gaps['sd ratio'].max():.2f}",
            flush=True,
        )
    if "exact" not in fits or len(fits) < 2:
        return float("nan")
    worst = float("nan")
    for name, learned in fits.items():
        if name == "exact":
            continue
        table = agreement(fits["exact"], learned, names)
        print(f"{name} against exact:")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        worst = float(table["gap (sd)"].max())
        where = table["gap (sd)"].idxmax()
        print(
            f"{name}: worst gap {worst:.3f} sd (MC se "
            f"{table.loc[where, 'mcse (sd)']:.3f}) at {where} (target < "
            f"{TARGET}: {'met' if worst < TARGET else 'NOT met'}); sd ratio "
            f"{table['sd ratio'].min():.2f} - {table['sd ratio'].max():.2f}",
            flush=True,
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["ddm_sdv", "full_ddm"])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="sampler seed")
    parser.add_argument(
        "--likelihoods",
        nargs="+",
        default=["neural", "exact"],
        choices=["neural", "refined", "exact", "reweighted"],
        help="in this order (refined: the shipped estimator refined at the fit's "
        "posterior); each learned one is compared with exact when it is run",
    )
    parser.add_argument(
        "--estimator",
        help="a trained estimator's file to use instead of the shipped one (one model)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x {args.trials} trials; {args.chains} chains x ({args.tune} + "
        f"{args.draws}); sampler seed {args.seed}",
        flush=True,
    )
    for model in args.models:
        compare(model, args)


if __name__ == "__main__":
    main()
