"""Peak memory of a posterior predictive streamed to disk, against its size.

    python benchmarks/predictive_memory.py [--subjects 155 --trials 240]
                                           [--draws 15 60]

A predictive asked for beyond `PREDICTIVE_ROWS` comes back as dask arrays
simulated block by block when written (`sbi_plugins.results.predictive`). This
simulates the large study's shape (155 subjects x 240 trials, DDM) at fixed
parameter draws, 4 chains x each `--draws`, writes each to netCDF as `fit`'s
`--out` does, and prints the rows, the array's size were it held in memory, the
file's size, the wall time and the peak memory (PSS of the process tree) above
what the process held before. Bounded streaming shows as a peak that stays flat
while the predictive grows.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import arviz as az
import numpy as np
from memory import PeakMemory, tree_pss_mib
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.results.predictive import PREDICTIVE_ROWS, simulate_predictive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=155)
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--draws", type=int, nargs="+", default=[15, 60])
    args = parser.parse_args()
    sim = sbi_plugins.get_simulator("ddm")
    trials, truth = simulate_dataset(args.subjects, args.trials, seed=0)
    prepared = prepare_data(trials, sim, "participant_id")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"{len(prepared.x):,} rows; streamed beyond {PREDICTIVE_ROWS:,} rows"
    )
    rng = np.random.default_rng(0)
    for draws in args.draws:
        theta = np.empty((4, draws, prepared.num_groups, 4))
        theta[..., 0] = rng.normal(truth["v"].to_numpy(), 0.2, theta.shape[:3])
        theta[..., 1] = rng.normal(truth["a"].to_numpy(), 0.05, theta.shape[:3])
        theta[..., 2], theta[..., 3] = 0.5, 0.3
        rows = 4 * draws * len(prepared.x)
        in_memory = rows * 2 * 8 / 2**20  # rt float64, response int64
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "predictive.nc"
            before = tree_pss_mib()
            start = time.perf_counter()
            with PeakMemory() as peak:
                lazy = simulate_predictive(sim, theta, prepared, 0, np.arange(draws))
                az.from_dict(posterior_predictive=lazy).to_netcdf(str(path))
            seconds = time.perf_counter() - start
            size = path.stat().st_size / 2**20
        print(
            f"{draws:4d} draws per chain: {rows:12,} rows, {in_memory:7.1f} MiB in "
            f"memory, file {size:7.1f} MiB, {seconds:6.1f} s, peak "
            f"{peak.mib - before:+7.1f} MiB above the {before:.0f} MiB before",
            flush=True,
        )


if __name__ == "__main__":
    main()
