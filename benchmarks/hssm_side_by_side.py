"""HSSM's analytic DDM (numpyro NUTS) beside this library's neural and exact fits.

    python benchmarks/hssm_side_by_side.py [--subjects 10 --trials 100]
        [--chains 4 --draws 1000 --tune 1000] [--hssm-python /work/hssm-venv/bin/python]
        [--fits hssm exact neural]

One data set, simulated once by this library (`simulate_dataset`: response coded
-1/1, as HSSM wants) and written to a CSV; then, one after another, never side by
side: HSSM 0.3 in its own virtual environment (`hssm_runner.py`, run by
`--hssm-python`: HSSM needs its own JAX, PyMC and matplotlib < 3.11), and this
library's exact and neural fits in this process. Every parameter by subject in
all three: HSSM's `p ~ 1 + (1|participant_id)` (non-centered normal offsets on the
identity link), ours `pooling="partial"` (a normal population on each parameter's
own scale). Neither has a lapse component.

The priors differ (HSSM's "safe" priors against ours), so the posteriors agree
only loosely: compare speed per effective sample, and the population means as a
check that both fit the same data, not to the decimal.

Per fit: wall time (HSSM's from building the model to its returned InferenceData,
its JAX compilation and pointwise log-likelihood included; ours `fit` with its
compile and log-likelihood group, no posterior predictive, since HSSM's `sample`
has none), min bulk ESS over the population-level parameters and over every
parameter in the posterior, seconds per effective sample, max r-hat, divergences,
leapfrog steps per draw, and the load average before and after. All statistics
come from this process's ArviZ on the draws, whichever library drew them.

Chains: ours run in one forked process per core (two here); HSSM's run with
numpyro's `chain_method="parallel"` over one XLA host device per chain
(`XLA_FLAGS=--xla_force_host_platform_device_count=<chains>`), sharing the same
cores. JAX's persistent compilation cache goes to `--jax-cache` (as torch keeps
its compiled code), so a rerun of the same shapes skips most of HSSM's compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins

PARAMETERS = ("v", "a", "z", "t")
RUNNER = Path(__file__).with_name("hssm_runner.py")
DEFAULT_HSSM_PYTHON = "/work/hssm-venv/bin/python"


def population_names(fit: str) -> dict[str, tuple[str, str]]:
    """Each parameter's population (mean, sd) variables in that fit's posterior:
    HSSM's intercept and group sd on the identity link, our population's."""
    if fit == "hssm":
        return {
            p: (f"{p}_Intercept", f"{p}_1|participant_id_sigma") for p in PARAMETERS
        }
    return {p: (f"{p}_mu", f"{p}_sigma") for p in PARAMETERS}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_hssm(args: argparse.Namespace, csv: Path, folder: Path) -> dict:
    """HSSM's fit in its own interpreter; returns its draws and wall time."""
    out = folder / "hssm.npz"
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={args.chains}",
        "JAX_COMPILATION_CACHE_DIR": str(args.jax_cache),
    }
    env.pop("PYTHONPATH", None)  # nothing of ours in HSSM's interpreter
    command = [
        args.hssm_python,
        str(RUNNER),
        str(csv),
        str(out),
        *("--chains", str(args.chains), "--draws", str(args.draws)),
        *("--tune", str(args.tune), "--seed", str(args.seed)),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"HSSM's fit failed:\n{done.stderr[-4000:]}")
    saved = np.load(out)
    timings = json.loads(out.with_suffix(".json").read_text())
    posterior = {
        k.removeprefix("posterior/"): saved[k]
        for k in saved.files
        if k.startswith("posterior/")
    }
    return {
        "posterior": posterior,
        "diverging": saved["diverging"],
        "n_steps": saved["n_steps"],
        "wall_s": timings["fit_s"],
        "note": (
            f"hssm {timings['hssm']}; process {process_s:.1f} s with imports "
            f"({timings['import_s']:.1f} s); model built in {timings['build_s']:.1f} "
            f"s; PyMC's sampling_time (compile + NUTS) {timings['sampling_time_s']:.1f}"
            " s"
        ),
        "priors": timings["priors"],
    }


def run_ours(args: argparse.Namespace, trials, likelihood: str) -> dict:
    """This library's fit, timed around `fit` alone."""
    start = time.perf_counter()
    idata = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        likelihood=likelihood,
        chains=args.chains,
        draws=args.draws,
        tune=args.tune,
        seed=args.seed,
        progress=False,
        posterior_predictive=False,  # HSSM's sample() draws none
        refine=False,  # the sampler's cost, as benchmarks/ddm_hierarchical.py
    )
    wall = time.perf_counter() - start
    stats = idata.sample_stats
    return {
        "posterior": {k: v.values for k, v in idata.posterior.data_vars.items()},
        "diverging": stats["diverging"].values,
        "n_steps": stats["n_steps"].values,
        "wall_s": wall,
        "note": f"chains in {min(args.chains, os.cpu_count() or 1)} processes",
    }


def summarise(fit: str, result: dict) -> dict:
    """ESS, r-hat and population means with this process's ArviZ."""
    idata = az.from_dict(posterior=result["posterior"])
    ess = az.ess(idata, method="bulk")
    rhat = az.rhat(idata)
    names = population_names(fit)
    population = [name for pair in names.values() for name in pair]
    min_ess = float(min(ess[v].min() for v in ess.data_vars))
    min_pop_ess = float(min(ess[v].min() for v in population))
    post = result["posterior"]
    return {
        "wall_s": result["wall_s"],
        "min_ess_population": min_pop_ess,
        "min_ess_all": min_ess,
        "s_per_ess_population": result["wall_s"] / min_pop_ess,
        "s_per_ess_all": result["wall_s"] / min_ess,
        "max_rhat": float(max(rhat[v].max() for v in rhat.data_vars)),
        "divergences": int(result["diverging"].sum()),
        "steps_per_draw": float(result["n_steps"].mean()),
        "means": {
            p: (float(post[m].mean()), float(post[m].std()), float(post[s].mean()))
            for p, (m, s) in names.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="every sampler's seed")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--fits", nargs="+", default=["hssm", "exact", "neural"])
    parser.add_argument("--hssm-python", default=DEFAULT_HSSM_PYTHON)
    parser.add_argument(
        "--jax-cache",
        type=Path,
        default=Path.home() / ".cache" / "sbi-plugins-benchmarks" / "jax",
        help="JAX's persistent compilation cache for HSSM's fit",
    )
    args = parser.parse_args()
    unknown = set(args.fits) - {"hssm", "exact", "neural"}
    if unknown:
        sys.exit(f"--fits takes hssm, exact and neural, not {sorted(unknown)}")
    if "hssm" in args.fits and not Path(args.hssm_python).is_file():
        sys.exit(
            f"HSSM's Python {args.hssm_python} not found: make HSSM's venv "
            "(docs/performance.md, 'Side by side with HSSM') or pass --hssm-python, "
            "or leave hssm out of --fits"
        )
    warnings.simplefilter("ignore")
    trials, truth = simulate_dataset(args.subjects, args.trials, seed=args.data_seed)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x {args.trials} trials; {args.chains} chains x ({args.tune} + "
        f"{args.draws}); sampler seed {args.seed}; every parameter by subject; "
        "priors differ (HSSM's 'safe' priors, ours): compare speed per effective "
        "sample and the means loosely"
    )
    print(
        "subjects' true values, mean (sd): "
        + ", ".join(
            f"{p} {truth[p].mean():.3f} ({truth[p].std(ddof=0):.3f})"
            for p in PARAMETERS
        ),
        flush=True,
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = folder / "data.csv"
        trials.to_csv(csv, index=False)
        for fit in args.fits:
            before = load()
            if fit == "hssm":
                result = run_hssm(args, csv, folder)
            else:
                result = run_ours(args, trials, fit)
            after = load()
            rows[fit] = summarise(fit, result)
            print(
                f"{fit}: load average before {before}, after {after}; {result['note']}"
            )
            if "priors" in result:
                print(f"  HSSM's priors: {result['priors']}")
            print_row(fit, rows[fit])
    print_table(rows)


def print_row(fit: str, r: dict) -> None:
    print(
        f"  {r['wall_s']:.1f} s wall, min bulk ESS {r['min_ess_population']:.0f} "
        f"(population) / {r['min_ess_all']:.0f} (all), "
        f"{r['s_per_ess_population'] * 1000:.1f} / {r['s_per_ess_all'] * 1000:.1f} "
        f"ms per effective sample, max r-hat {r['max_rhat']:.3f}, "
        f"{r['divergences']} divergences, {r['steps_per_draw']:.1f} leapfrog steps "
        "per draw",
        flush=True,
    )


def print_table(rows: dict[str, dict]) -> None:
    """Markdown, ready for docs/performance.md."""
    print(
        "\n| fit | wall | min ESS (population) | min ESS (all) | ms per ESS "
        "(population) | ms per ESS (all) | max r-hat | divergences | steps per draw |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fit, r in rows.items():
        print(
            f"| {fit} | {r['wall_s']:.1f} s | {r['min_ess_population']:.0f} | "
            f"{r['min_ess_all']:.0f} | {r['s_per_ess_population'] * 1000:.1f} | "
            f"{r['s_per_ess_all'] * 1000:.1f} | {r['max_rhat']:.3f} | "
            f"{r['divergences']} | {r['steps_per_draw']:.1f} |"
        )
    print(
        "\n| fit | "
        + " | ".join(f"{p} mean (sd) | {p} population sd" for p in PARAMETERS)
        + " |"
    )
    print("| --- |" + " ---: | ---: |" * len(PARAMETERS))
    for fit, r in rows.items():
        cells = [
            f"{mean:.3f} ({sd:.3f}) | {spread:.3f}"
            for mean, sd, spread in r["means"].values()
        ]
        print(f"| {fit} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
