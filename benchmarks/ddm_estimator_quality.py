"""How close is the DDM's learned likelihood to the analytic one?

    python benchmarks/ddm_estimator_quality.py [--estimator FILE] [--n 20000]

Draws held-out parameters uniformly over the training box and one simulated trial
each (fresh seed), then reports the error of the MNLE log-density against the exact
Navarro-Fuss log-density: mean absolute error, its quantiles, and the same inside
the central half of the box, where most data live.

Then the quantity that biases a posterior: the score error. At `--points`
parameter vectors in the central half of the box, `--trials` trials each, the
mean over trials of d/dtheta_j (log q - log p) is the per-trial bias b_j of the
learned log-likelihood's gradient; over N trials it moves a posterior mean by about
b_j / I_j (I_j: the exact per-trial Fisher information, the mean squared exact
score), while the posterior sd is 1 / sqrt(N I_j). So |b_j| / sqrt(I_j) is the gap
in posterior sd per sqrt(trial): times sqrt(N), the gap to expect from N trials
of that one parameter. Printed as its median and 90% quantile over the points.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import sbi_plugins
from sbi_plugins.estimators.sbi_internals import first_variable_logits, mnle_parts
from sbi_plugins.estimators.training import drop_invalid


def p_upper(v: np.ndarray, a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Probability of the upper boundary: boundaries 2a apart, start at 2az above
    the lower one, unit noise."""
    v = np.where(np.abs(v) < 1e-9, 1e-9, v)
    return -np.expm1(-4 * v * a * z) / -np.expm1(-4 * v * a)


def choice_logit_error(neural, theta: np.ndarray) -> np.ndarray:
    """Learned minus exact logit of P(response = +1) at each parameter row."""
    made = mnle_parts(neural._net).choice_net
    with torch.no_grad():
        logits = first_variable_logits(made, torch.as_tensor(theta).float())
    learned = (logits[:, 1] - logits[:, 0]).double().numpy()
    p = p_upper(*theta[:, :3].T)
    return learned - np.log(p / (1 - p))


def score_error(neural, exact, sim, points: int, trials: int, rng) -> None:
    """Per parameter: median and 90% quantile over points of |b_j| / sqrt(I_j)."""
    lower, upper = np.asarray(sim.lower), np.asarray(sim.upper)
    centres = lower + (upper - lower) * (0.25 + 0.5 * rng.random((points, len(lower))))
    ratios, noise = [], []
    for theta_row in centres:
        rows = np.repeat(theta_row[None], trials, axis=0)
        rows, x_np = drop_invalid(rows, sim.simulate(rows, rng))
        x = torch.as_tensor(x_np, dtype=torch.float64)
        inside = (x[:, 0] >= neural.estimator.support["rt"][0]) & (
            x[:, 0] <= neural.estimator.support["rt"][1]
        )
        scores = []
        for lik in (neural, exact):
            theta = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
            lik.log_prob(theta, x)[inside].sum().backward()
            scores.append(theta.grad[inside].numpy())
        difference = scores[0] - scores[1]
        fisher = (scores[1] ** 2).mean(axis=0)
        ratios.append(np.abs(difference.mean(axis=0)) / np.sqrt(fisher))
        noise.append(difference.std(axis=0) / np.sqrt(len(difference) * fisher))
    ratios, noise = np.array(ratios), np.array(noise)
    print(
        f"score error |b_j| / sqrt(I_j), posterior sd per sqrt(trial), {points} "
        f"points x {trials} trials in the central half of the box:"
    )
    for j, name in enumerate(sim.parameter_names):
        median, q90 = np.quantile(ratios[:, j], [0.5, 0.9])
        print(
            f"  {name}: median {median:.4f} (x sqrt(1000) = {median * 1000**0.5:.2f} "
            f"sd at 1,000 trials), 90% {q90:.4f}; Monte Carlo error of one point "
            f"{np.median(noise[:, j]):.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--estimator", default=None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    sim = sbi_plugins.get_simulator("ddm")
    neural = sbi_plugins.likelihood(sim, args.estimator, progress=False)
    exact = sbi_plugins.likelihood(sim, exact=True)
    rng = np.random.default_rng(args.seed)
    theta_np = sim.sample_training_prior(args.n, rng)
    theta_np, x_np = drop_invalid(theta_np, sim.simulate(theta_np, rng))
    theta = torch.as_tensor(theta_np, dtype=torch.float64)
    x = torch.as_tensor(x_np, dtype=torch.float64)
    inside = (x[:, 0] >= neural.estimator.support["rt"][0]) & (
        x[:, 0] <= neural.estimator.support["rt"][1]
    )
    with torch.no_grad():
        error = (neural.log_prob(theta, x) - exact.log_prob(theta, x))[inside].numpy()
    centre = (
        np.abs((theta_np - sim.lower) / (sim.upper - sim.lower) - 0.5).max(1) < 0.25
    )
    centre = centre[inside.numpy()]
    q = np.quantile(np.abs(error), [0.5, 0.9, 0.99])
    print(f"estimator: {neural.estimator.source} ({neural.estimator.checksum[:12]})")
    print(f"held-out trials: {len(error)} (parameters uniform over the training box)")
    print(
        f"log-density error, neural - exact: mean {error.mean():+.4f}, "
        f"MAE {np.abs(error).mean():.4f}, |error| quantiles 50/90/99%: "
        f"{q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f}"
    )
    print(
        f"central half of the box ({centre.sum()} trials): MAE "
        f"{np.abs(error[centre]).mean():.4f}, mean {error[centre].mean():+.4f}"
    )
    logit = choice_logit_error(neural, theta_np)
    p = p_upper(*theta_np[:, :3].T)
    common = (p > 0.01) & (p < 0.99)
    print(
        f"choice logit error, learned - exact, where 0.01 < P(+1) < 0.99 "
        f"({common.mean():.0%} of the box): MAE {np.abs(logit[common]).mean():.4f}, "
        f"99% quantile {np.quantile(np.abs(logit[common]), 0.99):.4f}"
    )
    score_error(neural, exact, sim, args.points, args.trials, rng)


if __name__ == "__main__":
    main()
