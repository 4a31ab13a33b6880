"""Wall time and peak memory of a DDM fit as the number of trials grows.

    python benchmarks/scaling.py [--rows 100 1000 5000 20000] [--likelihood neural]
        [--method nuts|vi] [--compile] [--json FILE]

Ten subjects throughout (v and a partial, z and t complete); each size runs in a
fresh process so its peak memory is its own. Leapfrog steps vary with how
concentrated the posterior is, so the figure that shows the scaling is the time
per gradient evaluation: for NUTS, the whole fit's wall time over the leapfrog
steps of one chain (fixed costs included, so it overstates the small sizes); for
VI (`--method vi`), the optimisation's own seconds over its SVI steps (one
gradient each). Beside it, the whole fit's wall time and peak memory
(log-likelihood and posterior predictive included). `--compile` compiles the
potential at every size, as a default-length fit (4 x (1000 + 1000)) would; without
it, these short fits use Pyro's JIT. `--json FILE` appends each row to FILE;
`--plot PNG --json FILE` only draws FILE's rows (time per step and peak memory
against trials, one line per method) into PNG.
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


def one_size(args: argparse.Namespace) -> dict:
    from sbi_plugins_ddm import simulate_dataset

    import sbi_plugins

    warnings.simplefilter("ignore")
    trials, _ = simulate_dataset(SUBJECTS, args.rows[0] // SUBJECTS, seed=0)
    start = time.perf_counter()
    with PeakMemory() as peak:
        fit = sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            pooling=POOLING,
            likelihood=args.likelihood,
            method=args.method,
            compile=True if args.compile else None,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=1,
            progress=False,
            refine=False,  # the sampler's cost; benchmarks/refinement.py: refined
        )
    wall = time.perf_counter() - start
    attrs = fit.posterior.attrs
    if args.method == "vi":
        steps, ms_per_step = (
            attrs["vi_steps"],
            1000 * attrs["vi_seconds"] / attrs["vi_steps"],
        )
    else:
        steps = float(fit.sample_stats["n_steps"].sum()) / args.chains
        ms_per_step = 1000 * wall / steps
    return {
        "method": args.method,
        "compiled": int(attrs.get("compiled", 0)),
        "rows": len(trials),
        "wall_s": round(wall, 1),
        "steps_per_chain": int(steps),
        "ms_per_step": round(ms_per_step, 2),
        "peak_mib": round(peak.mib),
        "loglik_values": int(fit.log_likelihood["rt,response"].size),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 5000, 20000])
    parser.add_argument("--likelihood", default="neural")
    parser.add_argument("--method", default="nuts", choices=["nuts", "vi"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", help="append each size's result to this file")
    parser.add_argument("--plot", help="draw the rows of --json into this PNG")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot:
        plot(args.json, args.plot)
        return
    if args.child:
        print(json.dumps(one_size(args)))
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.likelihood} "
        f"likelihood, {args.method}{', compiled' if args.compile else ''}, "
        f"{SUBJECTS} subjects, {args.chains} chains x ({args.tune} + "
        f"{args.draws}), chains in parallel"
    )
    print(
        f"{'rows':>7} {'wall s':>8} {'steps/chain':>12} {'ms/step':>8} {'peak MiB':>9}"
    )
    for rows in args.rows:
        command = [sys.executable, __file__, "--child", "--rows", str(rows)]
        command += ["--likelihood", args.likelihood, "--draws", str(args.draws)]
        command += ["--tune", str(args.tune), "--chains", str(args.chains)]
        command += ["--method", args.method] + (["--compile"] if args.compile else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['rows']:>7} {r['wall_s']:>8.1f} {r['steps_per_chain']:>12} "
            f"{r['ms_per_step']:>8.2f} {r['peak_mib']:>9}",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as file:
                file.write(json.dumps(r | {"likelihood": args.likelihood}) + "\n")


def plot(rows_file: str, png: str) -> None:
    """Time per gradient step and peak memory against trials, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(rows_file) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = {"nuts": "NUTS (ms per leapfrog step)", "vi": "VI (ms per SVI step)"}
    for method, label in labels.items():
        mine = [r for r in rows if r["method"] == method]
        mine.sort(key=lambda r: r["rows"])
        if not mine:
            continue
        trials = [r["rows"] for r in mine]
        left.plot(trials, [r["ms_per_step"] for r in mine], "o-", label=label)
        right.plot(trials, [r["peak_mib"] for r in mine], "o-", label=method.upper())
    for ax, ylabel in ((left, "ms per step"), (right, "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("trials")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    left.set_yscale("log")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
