"""Formula model, neural vs exact likelihood, and recovery of a condition effect.

    python benchmarks/formula_agreement.py [--subjects 10 --trials 40]
        [--draws 1000 --tune 500 --chains 4] [--seeds 1 11]

1. Agreement: `v ~ 1 + C(condition) + (1|participant_id)`, a, z, t common, on
   synthetic DDM data (the tests' design), fitted with the shipped estimator and
   with the exact density: each coefficient's mean gap in exact posterior sd, its
   Monte Carlo standard error, and the sd ratio.
2. Recovery (exact likelihood, 20 subjects x 2 conditions x 100 trials) for each
   data seed in `--seeds`: the condition effect's posterior mean, sd, 94% HDI, and
   how many sds the truth (-0.5 on the link scale) sits from the mean.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import arviz as az

import sbi_plugins

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_formulas import COMPARED, EFFECT, TRUE_EFFECT, ddm_design


def fit(frame, likelihood: str, args: argparse.Namespace):
    return sbi_plugins.fit(
        frame,
        "ddm",
        group="participant_id",
        formulas=EFFECT,
        pooling="complete",
        likelihood=likelihood,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=3,
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 11])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    ddm = sbi_plugins.get_simulator("ddm")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.chains} chains x ({args.tune} + {args.draws})"
    )
    frame = ddm_design(ddm, args.subjects, args.trials, TRUE_EFFECT, seed=5)
    summaries = {}
    for likelihood in ("exact", "neural"):
        start = time.perf_counter()
        idata = fit(frame, likelihood, args)
        summaries[likelihood] = az.summary(idata, var_names=COMPARED, round_to="none")
        print(f"{likelihood:>6}: {time.perf_counter() - start:6.1f} s wall")
    exact, neural = summaries["exact"], summaries["neural"]
    gap = (neural["mean"] - exact["mean"]) / exact["sd"]
    noise = (neural["mcse_mean"] ** 2 + exact["mcse_mean"] ** 2) ** 0.5 / exact["sd"]
    print(f"\nagreement, {args.subjects} subjects x 2 conditions x {args.trials}:")
    for name in gap.index:
        print(
            f"  {name:>26}: gap {gap[name]:+.3f} sd (MC se {noise[name]:.3f}), "
            f"sd ratio {neural['sd'][name] / exact['sd'][name]:.3f}"
        )
    print(f"  max |gap| {gap.abs().max():.3f} sd at {gap.abs().idxmax()}")
    for seed in args.seeds:
        frame = ddm_design(ddm, 20, 100, TRUE_EFFECT, seed=seed)
        start = time.perf_counter()
        posterior = fit(frame, "exact", args).posterior
        effect = posterior["v_C(condition)"].sel({"v_C(condition)_dim": "hard"})
        low, high = az.hdi(effect, hdi_prob=0.94)["v_C(condition)"].values
        mean, sd = float(effect.mean()), float(effect.std())
        print(
            f"recovery, data seed {seed}: effect {mean:.3f} +- {sd:.3f}, 94% HDI "
            f"[{low:.3f}, {high:.3f}], truth at {(TRUE_EFFECT - mean) / sd:+.2f} sd, "
            f"{time.perf_counter() - start:.0f} s"
        )


if __name__ == "__main__":
    main()
