"""Simulating rows that share their parameters (a subject's trials), ssm plugin.

    python benchmarks/repeated_rows.py [MODEL ...] [--subjects 10 --trials 100
                                       --draws 20 --repeats 3]

What a posterior predictive batch asks of a simulator: `--draws` draws of
`--subjects` subjects, each subject's `--trials` rows at its own parameters. Timed
two ways in one process, best of `--repeats` after a warm-up run: one
ssm-simulators call with one sample per row (the baseline: what the plugin did
before, and still does for rows that never repeat, as in training), and the
plugin's simulator, which simulates each distinct parameter vector's rows as its
`n_samples`.
"""

from __future__ import annotations

import argparse
import platform
import warnings
from functools import partial

import numpy as np
from sbi_plugins_ssm import SHIPPED, TYPICAL, ssm_simulator
from simulation_throughput import best_seconds


def one_sample_per_row(simulate, theta: np.ndarray) -> np.ndarray:
    """The plugin's simulator before: one call, one sample per row (one call per
    distinct value of `split_index`, levy's alpha, as the plugin still does)."""
    if simulate.split_index is None:
        return simulate._call(theta, 1, 1)[0]
    out = np.empty((len(theta), 2))
    for value in np.unique(theta[:, simulate.split_index]):
        rows = theta[:, simulate.split_index] == value
        out[rows] = simulate._call(theta[rows], 1, 1)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=list(SHIPPED))
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = args.draws * args.subjects * args.trials
    print(
        f"machine: {platform.machine()}; {args.draws} draws x {args.subjects} "
        f"subjects x {args.trials} trials = {rows:,} rows, best of {args.repeats}"
    )
    rng = np.random.default_rng(0)
    for name in args.models:
        simulator = ssm_simulator(name)
        simulate = simulator.simulate
        lows = np.array([p.lower for p in simulator.parameters])
        highs = np.array([p.upper for p in simulator.parameters])
        typical = np.array(
            [
                TYPICAL.get(p.name, ((p.lower + p.upper) / 2, 0))[0]
                for p in simulator.parameters
            ]
        )
        vectors = np.clip(
            typical
            + 0.05
            * (highs - lows)
            * rng.standard_normal((args.draws * args.subjects, len(lows))),
            lows,
            highs,
        )
        theta = np.repeat(vectors, args.trials, axis=0)
        per_row = best_seconds(
            partial(one_sample_per_row, simulate, theta), args.repeats
        )
        grouped = best_seconds(
            partial(simulate, theta, np.random.default_rng(1)), args.repeats
        )
        print(
            f"{name:>16}: one sample per row {per_row:6.2f} s, grouped "
            f"{grouped:6.2f} s, {per_row / grouped:5.1f} times faster "
            f"({rows / grouped:,.0f} rows/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
