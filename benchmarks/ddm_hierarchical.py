"""DDM hierarchical fit, neural vs exact likelihood, side by side in one run.

    python benchmarks/ddm_hierarchical.py [--subjects 10 --trials 100]
                                          [--draws 1000 --tune 1000 --chains 4]
    python benchmarks/ddm_hierarchical.py --subjects 30 --trials 200
    python benchmarks/ddm_hierarchical.py --seeds 2025 2026 2027   # pooled
    python benchmarks/ddm_hierarchical.py --subjects 30 --trials 200 --memory

Same data, seed and sampler settings for both. Prints wall time, time per effective
sample (slowest parameter), their ratio, and the agreement of the two posteriors:
each mean's gap in exact posterior sd and each sd's ratio. With `--memory`, also the
peak memory of each whole fit (chains, log-likelihood and posterior predictive
included; see `memory.py`); not by default, because reading the processes'
proportional set sizes costs about 60 ms of CPU per poll, four polls a second, which
the timed fits would share two cores with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
import warnings

import arviz as az
import numpy as np
from memory import PeakMemory
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins

POOLING = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}
NAMES = ["v", "a", "v_mu", "v_sigma", "a_mu", "a_sigma", "z", "t"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[2025],
        help="sampler seeds; with several, times and ESS are pooled over them",
    )
    parser.add_argument(
        "--likelihoods",
        nargs="+",
        default=["exact", "neural"],
        help="one alone: its time and memory only, no comparison",
    )
    parser.add_argument(
        "--memory", action="store_true", help="also sample peak memory (slows fits)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    trials, _ = simulate_dataset(args.subjects, args.trials, seed=0)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x {args.trials} trials; {args.chains} chains x ({args.tune} + "
        f"{args.draws}); sampler seeds {args.seeds}"
    )
    totals = {kind: [0.0, 0.0] for kind in args.likelihoods}  # seconds, ESS
    for seed in args.seeds:
        for kind, (seconds, ess) in compare_once(args, trials, seed).items():
            totals[kind][0] += seconds
            totals[kind][1] += ess
    if len(args.seeds) > 1:
        for kind, (seconds, ess) in totals.items():
            print(
                f"{kind:>6} all seeds: {seconds:7.1f} s, ESS {ess:6.0f}, "
                f"{seconds / ess * 1000:7.2f} ms per effective sample"
            )
    if len(totals) == 2 and len(args.seeds) > 1:
        (exact_s, exact_ess), (neural_s, neural_ess) = totals["exact"], totals["neural"]
        print(
            f"pooled neural / exact: wall {neural_s / exact_s:.2f}, per effective "
            f"sample {(neural_s / neural_ess) / (exact_s / exact_ess):.2f}"
        )


def compare_once(args, trials, seed: int) -> dict[str, tuple[float, float]]:
    """Fit each likelihood with one sampler seed; print times, ESS and agreement.
    Returns each likelihood's (wall seconds, min bulk ESS)."""
    fits, seconds, peak = {}, {}, {}
    for kind in args.likelihoods:
        start = time.perf_counter()
        with PeakMemory() if args.memory else contextlib.nullcontext() as memory:
            fits[kind] = sbi_plugins.fit(
                trials,
                "ddm",
                group="participant_id",
                pooling=POOLING,
                likelihood=kind,
                draws=args.draws,
                tune=args.tune,
                chains=args.chains,
                seed=seed,
                progress=False,
                refine=False,  # the sampler's cost; benchmarks/refinement.py: refined
            )
        seconds[kind] = time.perf_counter() - start
        peak[kind] = memory.mib if args.memory else None
    summary = {
        k: az.summary(v, var_names=NAMES, round_to="none") for k, v in fits.items()
    }
    per_ess, result = {}, {}
    print(f"sampler seed {seed}:")
    for kind in args.likelihoods:
        ess = summary[kind]["ess_bulk"].min()
        per_ess[kind] = seconds[kind] / ess
        result[kind] = (seconds[kind], ess)
        stats = fits[kind].sample_stats
        print(
            f"{kind:>6}: {seconds[kind]:7.1f} s wall, min ESS {ess:6.0f}, "
            f"{per_ess[kind] * 1000:7.2f} ms per effective sample, mean leapfrog "
            f"steps {float(stats['n_steps'].mean()):.1f}, divergences "
            f"{int(stats['diverging'].sum())}, peak memory "
            f"{'not measured' if peak[kind] is None else f'{peak[kind]:.0f} MiB'}, "
            f"elpd_loo {az.loo(fits[kind]).elpd_loo:.2f}"
        )
    if len(summary) < 2:
        return result
    exact, neural = summary["exact"], summary["neural"]
    gap = (neural["mean"] - exact["mean"]).abs() / exact["sd"]
    ratio = neural["sd"] / exact["sd"]
    print(
        f"max |mean gap| {gap.max():.3f} exact sd (at {gap.idxmax()}), median "
        f"{gap.median():.3f}; sd ratio range {ratio.min():.3f} - {ratio.max():.3f}"
    )
    print(
        f"targets: gap < 0.3 sd everywhere: {bool((gap < 0.3).all())}; "
        f"sd within 25%: {bool((np.abs(ratio - 1) < 0.25).all())}"
    )
    print(
        f"time ratio neural / exact: wall {seconds['neural'] / seconds['exact']:.2f}, "
        f"per effective sample {per_ess['neural'] / per_ess['exact']:.2f}"
    )
    worst = gap.sort_values(ascending=False).head(6)
    print("largest gaps:", ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    return result


if __name__ == "__main__":
    main()
