"""Neural vs exact likelihood on the 150 cookies, side by side in one run.

    python benchmarks/cookie_agreement.py [--draws 1000 --tune 1000 --chains 4]

Prints wall time, time per effective sample (slowest parameter), and the agreement
figures the core issue asks for: mean gap in exact posterior sd, sd ratio, elpd_loo.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import arviz as az
import numpy as np
from sbi_plugins_cookie import example_data

import sbi_plugins

VARS = ["lam", "lam_mu", "lam_sigma"]


def timed_fit(
    likelihood: str, args: argparse.Namespace
) -> tuple[az.InferenceData, float]:
    start = time.perf_counter()
    idata = sbi_plugins.fit(
        example_data(),
        "cookie",
        group="location",
        likelihood=likelihood,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=args.seed,
        progress=False,
    )
    return idata, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.processor() or platform.machine()}, cores: "
        f"{__import__('os').cpu_count()}, {args.chains} chains x "
        f"({args.tune} + {args.draws})"
    )
    fits, seconds = {}, {}
    for kind in ("exact", "neural"):
        fits[kind], seconds[kind] = timed_fit(kind, args)
    summaries = {
        k: az.summary(v, var_names=VARS, round_to="none") for k, v in fits.items()
    }
    for kind in ("exact", "neural"):
        ess = summaries[kind]["ess_bulk"].min()
        loo = az.loo(fits[kind])
        print(
            f"{kind:>6}: {seconds[kind]:6.1f} s wall, min ESS {ess:6.0f}, "
            f"{seconds[kind] / ess * 1000:6.2f} ms per effective sample, "
            f"elpd_loo {loo.elpd_loo:8.2f} (se {loo.se:.2f}), "
            f"divergences {int(fits[kind].sample_stats['diverging'].sum())}"
        )
    exact, neural = summaries["exact"], summaries["neural"]
    gap = (neural["mean"] - exact["mean"]).abs() / exact["sd"]
    ratio = neural["sd"] / exact["sd"]
    print("\nper parameter: |mean gap| / exact sd, sd ratio neural/exact")
    for name in exact.index:
        print(f"  {name:>10}: {gap[name]:.3f}  {ratio[name]:.3f}")
    d_elpd = az.loo(fits["neural"]).elpd_loo - az.loo(fits["exact"]).elpd_loo
    print(
        f"\nmax mean gap {gap.max():.3f} sd (target < 0.25), max |sd ratio - 1| "
        f"{np.abs(ratio - 1).max():.3f} (target < 0.20), elpd_loo difference "
        f"{d_elpd:+.2f} (target |.| < 1.0)"
    )
    print(f"time ratio neural / exact: {seconds['neural'] / seconds['exact']:.2f}")


if __name__ == "__main__":
    main()
