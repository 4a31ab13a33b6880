"""Posterior predictive of a DDM fit: one process vs one per core, side by side.

    python benchmarks/predictive.py [--subjects 10 --trials 100]

Simulates what `fit` simulates after sampling a 4 x 1000-draw DDM fit (thinned to
at most 2 million rows) at fixed parameter draws, once in this process and once in
local processes, and checks that both give the same draws.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.results.predictive import predictive_draws, simulate_predictive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    sim = sbi_plugins.get_simulator("ddm")
    trials, truth = simulate_dataset(args.subjects, args.trials, seed=0)
    prepared = prepare_data(trials, sim, "participant_id")
    rng = np.random.default_rng(0)
    theta = np.empty((4, 1000, prepared.num_groups, 4))
    theta[..., 0] = rng.normal(truth["v"].to_numpy(), 0.2, theta.shape[:3])
    theta[..., 1] = rng.normal(truth["a"].to_numpy(), 0.05, theta.shape[:3])
    theta[..., 2], theta[..., 3] = 0.5, 0.3
    selected = predictive_draws(True, (4, 1000), len(prepared.x))
    rows = 4 * len(selected) * len(prepared.x)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {rows:,} simulated "
        f"trials ({len(selected)} draws per chain x 4 chains x {len(prepared.x)} rows)"
    )
    seconds, results = {}, {}
    for workers in (1, os.cpu_count() or 1):
        start = time.perf_counter()
        results[workers] = simulate_predictive(
            sim, theta, prepared, 0, selected, workers=workers
        )
        seconds[workers] = time.perf_counter() - start
        print(f"{workers} process(es): {seconds[workers]:6.1f} s")
    one, many = results[1], results[max(results)]
    same = all(np.array_equal(one[k], many[k]) for k in one)
    print(
        f"same draws: {same}; one / {max(results)} processes: "
        f"{seconds[1] / seconds[max(results)]:.2f}"
    )


if __name__ == "__main__":
    main()
