"""Fits with omissions at a deadline: the DDM neural vs exact, and angle's recovery.

    python benchmarks/deadline.py [--subjects 10 --trials 100 --omitted 0.15]
                                  [--draws 1000 --tune 1000 --chains 4]
                                  [--models ddm angle] [--dropped]

Data: `simulate_dataset` (seed 0) for each model, cut at the deadline that leaves
`--omitted` of all trials without a response (their `rt` set to NaN). The DDM is
fitted with the shipped estimator and with the exact density, same data, seed and
sampler settings (`v` and `a` by subject, `z` and `t` pooled); printed: wall time,
min bulk ESS, each mean's gap in exact posterior sd, the sd ratios, and the
omission rate observed vs the posterior predictive. `--dropped` adds the exact fit
of the decided rows alone (the omissions ignored), against the same truth.
angle (no exact density) is fitted with its shipped estimator; printed: the share
of the true values inside their 94% HDI and the omission rates.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import arviz as az
import numpy as np
import pandas as pd

import sbi_plugins

POOLING = {"v": "partial", "a": "partial"}
"""By subject; every other parameter pooled completely (a common true value)."""


def censored(trials: pd.DataFrame, omitted: float) -> tuple[pd.DataFrame, float]:
    """The trials with the slowest `omitted` share's rt removed: the deadline."""
    deadline = float(np.quantile(trials["rt"].dropna(), 1 - omitted))
    out = trials.copy()
    out.loc[~(out["rt"] < deadline), "rt"] = np.nan
    return out, deadline


def simulated(model: str, subjects: int, trials: int):
    """(trials, truth) with the non-DDM-like parameters common to all subjects."""
    if model == "ddm":
        from sbi_plugins_ddm import simulate_dataset

        return simulate_dataset(subjects, trials, seed=0)
    from sbi_plugins_ssm import TYPICAL, simulate_dataset

    simulator = sbi_plugins.get_simulator(model)
    population = {
        p.name: (TYPICAL.get(p.name, ((p.lower + p.upper) / 2, 0))[0], 0.0)
        for p in simulator.parameters
        if p.name not in POOLING
    }
    return simulate_dataset(model, subjects, trials, seed=0, population=population)


def pooling_for(model: str) -> dict[str, str]:
    names = sbi_plugins.get_simulator(model).parameter_names
    return {n: POOLING.get(n, "complete") for n in names}


def timed_fit(data, model, args, **options):
    start = time.perf_counter()
    fit = sbi_plugins.fit(
        data,
        model,
        group="participant_id",
        pooling=pooling_for(model),
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=2025,
        progress=False,
        refine=False,
        **options,
    )
    return fit, time.perf_counter() - start


def omission_rates(fit) -> str:
    observed = np.isnan(fit.observed_data["rt"].values).mean()
    predicted = np.isnan(fit.posterior_predictive["rt"].values).mean(axis=-1)
    low, high = np.quantile(predicted, [0.03, 0.97])
    return (
        f"omitted: observed {observed:.3f}, predictive {predicted.mean():.3f} "
        f"[94%: {low:.3f}, {high:.3f}]"
    )


def recovery(fit, truth: pd.DataFrame) -> str:
    """True values inside the 94% HDI: per subject where by subject, else the
    common value."""
    hdi = az.hdi(fit, hdi_prob=0.94)
    inside = total = 0
    for name in truth.columns:
        bounds = np.asarray(hdi[name].values).reshape(-1, 2)
        values = truth[name].to_numpy()[: len(bounds)]
        inside += int(((bounds[:, 0] <= values) & (values <= bounds[:, 1])).sum())
        total += len(values)
    return f"truth inside 94% HDI: {inside}/{total}"


def describe(name: str, fit, seconds: float) -> None:
    summary = az.summary(fit, round_to="none")
    print(
        f"{name:>16}: {seconds:7.1f} s wall, min bulk ESS "
        f"{summary['ess_bulk'].min():6.0f}, max r-hat {summary['r_hat'].max():.3f}, "
        f"divergences {int(fit.sample_stats['diverging'].sum())}"
    )


def ddm(args) -> None:
    trials, truth = simulated("ddm", args.subjects, args.trials)
    data, deadline = censored(trials, args.omitted)
    print(f"ddm: deadline {deadline:.3f} s, {np.isnan(data['rt']).mean():.1%} omitted")
    fits = {}
    for kind in ("exact", "neural"):
        fits[kind], seconds = timed_fit(
            data, "ddm", args, likelihood=kind, deadline=deadline
        )
        describe(kind, fits[kind], seconds)
        print(f"{'':>18}{omission_rates(fits[kind])}; {recovery(fits[kind], truth)}")
    names = ["v", "a", "v_mu", "v_sigma", "a_mu", "a_sigma", "z", "t"]
    exact, neural = (az.summary(fits[k], var_names=names) for k in ("exact", "neural"))
    gap = (neural["mean"] - exact["mean"]).abs() / exact["sd"]
    ratio = neural["sd"] / exact["sd"]
    print(
        f"neural vs exact: max |mean gap| {gap.max():.3f} exact sd (at "
        f"{gap.idxmax()}), median {gap.median():.3f}; sd ratio "
        f"{ratio.min():.3f} - {ratio.max():.3f}"
    )
    print("every gap:", ", ".join(f"{k} {v:.2f}" for k, v in gap.items()))
    print("every sd ratio:", ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    if args.dropped:
        decided = data.dropna(subset=["rt"])
        fit, seconds = timed_fit(decided, "ddm", args, likelihood="exact")
        describe("exact, dropped", fit, seconds)
        print(f"{'':>18}{recovery(fit, truth)} (the omissions ignored)")
        common = az.summary(fit, var_names=["z", "t", "v_mu", "a_mu"])
        kept = az.summary(fits["exact"], var_names=["z", "t", "v_mu", "a_mu"])
        shift = (common["mean"] - kept["mean"]) / kept["sd"]
        print(
            "dropped vs deadline fit, in the deadline fit's sd: "
            + ", ".join(f"{k} {v:+.2f}" for k, v in shift.items())
        )


def angle(args) -> None:
    trials, truth = simulated("angle", args.subjects, args.trials)
    trials = trials.dropna(subset=["rt"])  # undecided after the simulator's 20 s
    data, deadline = censored(trials, args.omitted)
    print(
        f"angle: deadline {deadline:.3f} s, {np.isnan(data['rt']).mean():.1%} omitted"
    )
    fit, seconds = timed_fit(data, "angle", args, deadline=deadline)
    describe("neural", fit, seconds)
    print(f"{'':>18}{omission_rates(fit)}; {recovery(fit, truth)}")
    pooled = [n for n, m in pooling_for("angle").items() if m == "complete"]
    summary = az.summary(fit, var_names=pooled)
    for name in pooled:
        row, true = summary.loc[name], truth[name].iloc[0]
        print(
            f"{'':>18}{name}: {row['mean']:.3f} +- {row['sd']:.3f} (truth "
            f"{true:.3f}, {(row['mean'] - true) / row['sd']:+.2f} sd)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--omitted", type=float, default=0.15)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["ddm", "angle"])
    parser.add_argument("--dropped", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x {args.trials} trials; {args.chains} chains x ({args.tune} + "
        f"{args.draws})"
    )
    for model in args.models:
        {"ddm": ddm, "angle": angle}[model](args)


if __name__ == "__main__":
    main()
