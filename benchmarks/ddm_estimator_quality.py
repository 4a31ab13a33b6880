"""How close is the DDM's learned likelihood to the analytic one?

    python benchmarks/ddm_estimator_quality.py [--estimator FILE] [--n 20000]

Draws held-out parameters uniformly over the training box and one simulated trial
each (fresh seed), then reports the error of the MNLE log-density against the exact
Navarro-Fuss log-density: mean absolute error, its quantiles, and the same inside
the central half of the box, where most data live.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--estimator", default=None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=12345)
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


if __name__ == "__main__":
    main()
