"""Is a reference density the simulator's own? A score test at the truth.

    python benchmarks/reference_score.py [full_ddm ddm_sdv] [--trials 100000]
                                         [--fit-trials 1000] [--seed 1]

At the true parameters the mean score (the gradient of the log-density) over the
simulator's own trials is zero exactly when the density is the simulator's. For
each of the benchmark's ten subjects (`simulate_dataset` seed 0, `t` 0.6 as in
`ssm_reference.py`) this simulates `--trials` trials, takes every trial's score
under the registered reference (`Simulator.log_likelihood`), and prints the bias
it implies for a maximum-likelihood fit, `I^-1 mean score` (I: the scores'
covariance, the Fisher information), in the sd of a fit to `--fit-trials` trials,
with its Monte Carlo error. A reference that matches the simulator gives biases
scattered around 0 within that error; a neural fit's gap from the reference far
beyond it is then the estimator's, not the reference's.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings

import numpy as np
import torch
from sbi_plugins_ssm import simulate_dataset

import sbi_plugins

LATE_ONSET = {"t": (0.6, 0.0)}
"""As in `ssm_reference.py`: its data's common onset."""


def per_trial_scores(simulator, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`(n, P)` scores: each row's log-density depends on its own parameter row
    only, so one gradient of the sum gives every row's."""
    scores = []
    for rows in np.array_split(np.arange(len(x)), max(1, len(x) // 20_000)):
        theta_rows = torch.tensor(
            np.repeat(theta[None], len(rows), 0), requires_grad=True
        )
        log_density = simulator.log_likelihood(theta_rows, torch.tensor(x[rows]))
        scores.append(torch.autograd.grad(log_density.sum(), theta_rows)[0].numpy())
    return np.concatenate(scores)


def implied_bias(scores: np.ndarray, fit_trials: int) -> tuple[np.ndarray, ...]:
    """(bias, its Monte Carlo error), both in the sd of a `fit_trials` fit."""
    information = np.cov(scores.T)
    inverse = np.linalg.inv(information)
    bias = inverse @ scores.mean(0)
    error = np.sqrt(np.diag(inverse @ information @ inverse) / len(scores))
    sd = np.sqrt(np.diag(inverse) / fit_trials)
    return bias / sd, error / sd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["full_ddm", "ddm_sdv"])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--fit-trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores", flush=True)
    rng = np.random.default_rng(args.seed)
    for model in args.models:
        simulator = sbi_plugins.get_simulator(model)
        names = simulator.parameter_names
        population = LATE_ONSET if "st" in names else None
        _, truth = simulate_dataset(model, 10, 1, seed=0, population=population)
        biases, errors = [], []
        for subject, theta in truth.iterrows():
            x = simulator.simulate(
                np.repeat(theta.to_numpy()[None], args.trials, 0), rng
            )
            x = x[np.isfinite(x).all(axis=1)]
            bias, error = implied_bias(
                per_trial_scores(simulator, theta.to_numpy(), x), args.fit_trials
            )
            biases.append(bias)
            errors.append(error)
            print(
                f"{model} subject {subject}: "
                + ", ".join(
                    f"{n} {b:+.2f} ± {e:.2f}"
                    for n, b, e in zip(names, bias, error, strict=True)
                ),
                flush=True,
            )
        biases, errors = np.array(biases), np.array(errors)
        mean_error = np.sqrt((errors**2).sum(0)) / len(errors)
        print(
            f"{model}: implied bias in sd of a {args.fit_trials}-trial fit, mean over "
            f"subjects (Monte Carlo error): "
            + ", ".join(
                f"{n} {b:+.3f} ({e:.3f})"
                for n, b, e in zip(names, biases.mean(0), mean_error, strict=True)
            )
            + f"; largest |bias| {np.abs(biases).max():.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
