"""Issue 18: the learned likelihood's error as data grow, amortized vs refined vs
exact, in one run.

    python benchmarks/refinement.py [--sizes 10x100 30x200 40x250]
        [--draws 500] [--pooling va|all] [--rounds 3] [--simulations 1000000]
        [--json results.json]

For each size, simulates a hierarchical DDM data set (`simulate_dataset`, seed 0)
and fits it three times with the same seed, 4 chains x (draws + draws): the exact
density, the shipped estimator as it is (`refine=False`) and with the library's
per-fit refinement (`refine=True`, its defaults, from an empty cache). Prints, per
fit, the wall time, the worst |mean gap| from the exact posterior in exact sd over
every subject-level and population parameter, and the sd ratios; for the refined
fit also each round's shift (the diagnostic a likelihood-free fit has instead of
an exact fit), its simulations and the seconds of simulating and training.
`--pooling va`: v and a partial, z and t complete; `all`: all four partial.
`--rounds` and `--simulations` replace those two `Refinement` defaults (the
docs' advice for a fit still flagged after the default rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings

import arviz as az
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins
from sbi_plugins.estimators.refinement import Refinement

POOLINGS = {
    "va": {"v": "partial", "a": "partial", "z": "complete", "t": "complete"},
    "all": "partial",
}


def fit(trials, likelihood: str, refine, args) -> tuple[az.InferenceData, float]:
    started = time.perf_counter()
    idata = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        pooling=POOLINGS[args.pooling],
        likelihood=likelihood,
        refine=refine,
        draws=args.draws,
        tune=args.draws,
        chains=4,
        seed=args.seed,
        progress=False,
        posterior_predictive=False,
    )
    return idata, time.perf_counter() - started


def gap(fit_a: az.InferenceData, exact: az.InferenceData) -> dict[str, object]:
    """Worst |mean gap| of fit_a from the exact fit in exact sd, and sd ratios."""
    names = list(exact.posterior.data_vars)
    a, b = (az.summary(f, var_names=names, round_to="none") for f in (fit_a, exact))
    distance = (a["mean"] - b["mean"]).abs() / b["sd"]
    ratio = a["sd"] / b["sd"]
    return {
        "max_gap_sd": round(float(distance.max()), 3),
        "worst": str(distance.idxmax()),
        "median_gap_sd": round(float(distance.median()), 3),
        "sd_ratio": [round(float(ratio.min()), 3), round(float(ratio.max()), 3)],
        "min_ess_bulk": round(float(a["ess_bulk"].min())),
    }


def one_size(subjects: int, trials_each: int, args) -> dict[str, object]:
    trials, _ = simulate_dataset(subjects, trials_each, seed=0)
    exact, exact_s = fit(trials, "exact", False, args)
    amortized, amortized_s = fit(trials, "neural", False, args)
    plan = Refinement(rounds=args.rounds, simulations=args.simulations)
    refined, refined_s = fit(trials, "neural", plan, args)
    record = json.loads(refined.posterior.attrs["refinement"])
    check = {
        name: json.loads(f.posterior.attrs["estimator_check"])["verdict"]
        for name, f in (("amortized", amortized), ("refined", refined))
    }
    row = {
        "size": f"{subjects}x{trials_each}",
        "trials": subjects * trials_each,
        "exact_seconds": round(exact_s, 1),
        "amortized_seconds": round(amortized_s, 1),
        "refined_seconds": round(refined_s, 1),
        "refinement_seconds": record["seconds"],
        "refinement_share": round(
            sum(r["round_seconds"] for r in record["rounds"]) / refined_s, 3
        ),
        "amortized": gap(amortized, exact),
        "refined": gap(refined, exact),
        "rounds": [
            {
                k: r[k]
                for k in (
                    "max_shift_sd",
                    "max_beyond_noise_sd",
                    "worst",
                    "num_simulations",
                    "simulation_seconds",
                    "training_seconds",
                    "fit_seconds",
                )
            }
            for r in record["rounds"]
        ],
        "verdict": check,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["10x100", "30x200", "40x250"])
    parser.add_argument("--draws", type=int, default=500, help="and as many tuning")
    parser.add_argument("--pooling", choices=tuple(POOLINGS), default="va")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--rounds", type=int, default=Refinement.rounds)
    parser.add_argument("--simulations", type=int, default=Refinement.simulations)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ["SBI_PLUGINS_CACHE_DIR"] = tempfile.mkdtemp(prefix="refine-bench-")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; pooling "
        f"{args.pooling}; 4 chains x ({args.draws} + {args.draws}); seed {args.seed}; "
        f"refinement: {args.rounds} rounds x {args.simulations} simulations",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        subjects, trials_each = (int(n) for n in size.lower().split("x"))
        rows.append(one_size(subjects, trials_each, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(
        "size      trials  gap amortized -> refined (exact sd)  round shifts  "
        "exact / amortized / refined s  refinement share"
    )
    for r in rows:
        shifts = ", ".join(f"{x['max_shift_sd']:.2f}" for x in r["rounds"])
        print(
            f"{r['size']:9} {r['trials']:6}  {r['amortized']['max_gap_sd']:.2f} -> "
            f"{r['refined']['max_gap_sd']:.2f}  ({shifts})  {r['exact_seconds']:.0f}"
            f" / {r['amortized_seconds']:.0f} / {r['refined_seconds']:.0f}  "
            f"{r['refinement_share']:.0%}"
        )


if __name__ == "__main__":
    main()
