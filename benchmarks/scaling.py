"""Wall time and peak memory of a DDM fit as the number of trials grows.

    python benchmarks/scaling.py [--rows 100 1000 5000 20000] [--likelihood neural]

Ten subjects throughout (v and a partial, z and t complete); each size runs in a
fresh process so its peak memory is its own. Leapfrog steps vary with how
concentrated the posterior is, so the figure that shows the scaling is the time
per gradient evaluation (wall time of sampling over leapfrog steps per chain),
beside the whole fit's wall time and peak memory (log-likelihood and posterior
predictive included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

from memory import PeakMemory

SUBJECTS = 10
POOLING = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}


def one_size(rows: int, likelihood: str, draws: int, tune: int, chains: int) -> dict:
    from sbi_plugins_ddm import simulate_dataset

    import sbi_plugins

    warnings.simplefilter("ignore")
    trials, _ = simulate_dataset(SUBJECTS, rows // SUBJECTS, seed=0)
    start = time.perf_counter()
    with PeakMemory() as peak:
        fit = sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            pooling=POOLING,
            likelihood=likelihood,
            draws=draws,
            tune=tune,
            chains=chains,
            seed=1,
            progress=False,
            refine=False,  # the sampler's cost; benchmarks/refinement.py: refined
        )
    wall = time.perf_counter() - start
    steps = float(fit.sample_stats["n_steps"].sum()) / chains
    return {
        "rows": len(trials),
        "wall_s": round(wall, 1),
        "steps_per_chain": int(steps),
        "peak_mib": round(peak.mib),
        "loglik_values": int(fit.log_likelihood["rt,response"].size),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 5000, 20000])
    parser.add_argument("--likelihood", default="neural")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = one_size(
            args.rows[0], args.likelihood, args.draws, args.tune, args.chains
        )
        print(json.dumps(result))
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.likelihood} "
        f"likelihood, {SUBJECTS} subjects, {args.chains} chains x ({args.tune} + "
        f"{args.draws}), chains in parallel"
    )
    print(
        f"{'rows':>7} {'wall s':>8} {'steps/chain':>12} {'ms/step':>8} {'peak MiB':>9}"
    )
    for rows in args.rows:
        command = [sys.executable, __file__, "--child", "--rows", str(rows)]
        command += ["--likelihood", args.likelihood, "--draws", str(args.draws)]
        command += ["--tune", str(args.tune), "--chains", str(args.chains)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_step = 1000 * r["wall_s"] / r["steps_per_chain"]
        print(
            f"{r['rows']:>7} {r['wall_s']:>8.1f} {r['steps_per_chain']:>12} "
            f"{per_step:>8.2f} {r['peak_mib']:>9}",
            flush=True,
        )


if __name__ == "__main__":
    main()
