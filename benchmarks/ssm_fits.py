"""Hierarchical fits of the ssm plugin's shipped models: time, sampler health, recovery.

    python benchmarks/ssm_fits.py [MODEL ...] [--subjects 10 --trials 100]
                                  [--draws 1000 --tune 1000 --chains 4]
                                  [--pooling va | all] [--centered] [--noncentered]
                                  [--mass-matrix diagonal | dense] [--no-predictive]

For each model: 10 subjects x 100 trials simulated by `simulate_dataset` (seed 0),
fitted with the shipped estimator. `--pooling va` (default) gives `v` and `a` a
population and pools the others completely, as the DDM benchmarks do; `--pooling
all` is the fit's default, every parameter by subject. Prints wall time, min bulk
ESS, max r-hat, divergences, mean leapfrog steps per draw, and recovery: the share
of the true subject-level and pooled values inside their 94% HDI, and the
populations' form `noncentered="auto"` chose (the fits use it). `--centered` and
`--noncentered` add, per model, the same fit with every population in that form,
and the ratios of `auto` to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import arviz as az
import numpy as np
from sbi_plugins_ssm import SHIPPED, TYPICAL, simulate_dataset

import sbi_plugins


def pooling_for(simulator, mode: str) -> dict[str, str] | str:
    if mode == "all":
        return "partial"
    return {
        p.name: "partial" if p.name in ("v", "a") else "complete"
        for p in simulator.parameters
    }


def common(simulator, pooling) -> dict[str, tuple[float, float]] | None:
    """Completely pooled parameters get one true value (the ddm-like typical value,
    or the box's centre), so the data match the model."""
    if isinstance(pooling, str):
        return None
    centre = {p.name: (p.lower + p.upper) / 2 for p in simulator.parameters}
    return {
        name: (TYPICAL[name][0] if name in TYPICAL else centre[name], 0.0)
        for name, mode in pooling.items()
        if mode == "complete"
    }


def recovery(idata, truth, pooling) -> tuple[int, int]:
    """(inside, total): true values inside the 94% HDI, per subject where the
    parameter is by subject, the common value where it is pooled."""
    hdi = az.hdi(idata, hdi_prob=0.94)
    inside = total = 0
    for name in truth.columns:
        bounds = hdi[name].values
        mode = pooling if isinstance(pooling, str) else pooling[name]
        values = truth[name].to_numpy()
        if mode == "complete":
            values = values[:1]  # every subject's truth is the common value
            if np.ptp(truth[name]) > 0:
                continue  # no single truth to recover
            bounds = bounds.reshape(1, 2)
        inside += int(((bounds[:, 0] <= values) & (values <= bounds[:, 1])).sum())
        total += len(values)
    return inside, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=list(SHIPPED))
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--pooling", choices=["va", "all"], default="va")
    parser.add_argument(
        "--centered",
        dest="forms",
        action="append_const",
        const=False,
        default=[],
        help="also fit with every population centered, and compare",
    )
    parser.add_argument(
        "--noncentered",
        dest="forms",
        action="append_const",
        const=True,
        help="also fit with every population non-centered, and compare",
    )
    parser.add_argument(
        "--mass-matrix", choices=("auto", "diagonal", "dense"), default="auto"
    )
    parser.add_argument(
        "--no-predictive", action="store_true", help="skip the posterior predictive"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x {args.trials} trials; {args.chains} chains x ({args.tune} + "
        f"{args.draws}); pooling {args.pooling}; mass matrix {args.mass_matrix}"
        + ("; no posterior predictive" if args.no_predictive else "")
    )
    for model in args.models:
        simulator = sbi_plugins.get_simulator(model)
        pooling = pooling_for(simulator, args.pooling)
        population = common(simulator, pooling)
        trials, truth = simulate_dataset(
            model, args.subjects, args.trials, seed=0, population=population
        )
        runs = {}
        forms = ["auto"] + [f for f in (True, False) if f in args.forms]
        for noncentered in forms:
            start = time.perf_counter()
            idata = sbi_plugins.fit(
                trials,
                model,
                group="participant_id",
                pooling=pooling,
                draws=args.draws,
                tune=args.tune,
                chains=args.chains,
                seed=1,
                progress=False,
                refine=False,
                noncentered=noncentered,
                mass_matrix=args.mass_matrix,
                posterior_predictive=not args.no_predictive,
            )
            seconds = time.perf_counter() - start
            summary = az.summary(idata, round_to="none")
            stats = idata.sample_stats
            inside, total = recovery(idata, truth, pooling)
            label = {"auto": model, True: f"{model} non-centered"}.get(
                noncentered, f"{model} centered"
            )
            runs[noncentered] = (seconds, summary["ess_bulk"].min())
            print(
                f"{label:>24}: {seconds:7.1f} s wall, min ESS "
                f"{summary['ess_bulk'].min():6.0f}, max r-hat "
                f"{summary['r_hat'].max():.3f}, "
                f"divergences {int(stats['diverging'].sum())}, mean leapfrog steps "
                f"{float(stats['n_steps'].mean()):.1f}, truth in 94% HDI "
                f"{inside}/{total}; {idata.attrs.get('mass_matrix')} mass matrix; "
                f"populations {idata.attrs.get('populations')}",
                flush=True,
            )
        fast, ess = runs["auto"]
        for form in (True, False):
            if form in runs:
                slow, ess_c = runs[form]
                print(
                    f"{'':>24}  default / {'non-centered' if form else 'centered'}: "
                    f"wall {fast / slow:.2f}, min ESS per second "
                    f"{(ess / fast) / (ess_c / slow):.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
