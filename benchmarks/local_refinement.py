"""Prototype for issue 18: per-fit local refinement of the shipped DDM estimator.

    python benchmarks/local_refinement.py [--subjects 30 --trials 200]
        [--draws 500 --rounds 2 --simulations 1000000 --epochs 10]

Fits the same data with the exact density and with the shipped estimator; then, each
round, simulates one trial at each of `--simulations` parameter vectors drawn from the
previous neural posterior (every subject's cell parameters spread twice as wide around
their posterior mean, clipped inside the training box), fine-tunes a copy of the
estimator on them (all weights, Adam with a cosine schedule, sbi's NLE loss) and refits.
Prints, per round, the shift from the previous neural posterior and the gap to the
exact one, both as max |mean difference| in exact / previous posterior sd, with the
sd ratios, and the seconds of simulating, training and refitting. Not yet a library
feature (`fit(refine=...)` is issue 18's deliverable); this measures whether the
idea closes the gap and whether the shift between rounds tells the user so.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
import warnings

import arviz as az
import numpy as np
import torch
from sbi_plugins_ddm import simulate_dataset

import sbi_plugins
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.estimators.resolve import shipped_estimator
from sbi_plugins.estimators.training import (
    _refine,
    drop_invalid,
    encode_for_network,
    subtract_shifts,
)

POOLING = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}
NAMES = ["v", "a", "v_mu", "v_sigma", "a_mu", "a_sigma", "z", "t"]
WIDEN = 2.0


def fit(trials, likelihood: str, estimator, draws: int, seed: int):
    started = time.perf_counter()
    idata = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        pooling=POOLING,
        likelihood=likelihood,
        estimator=estimator,
        draws=draws,
        tune=draws,
        chains=4,
        seed=seed,
        progress=False,
        posterior_predictive=False,
    )
    return idata, time.perf_counter() - started


def agreement(fit_a, fit_b, label: str) -> float:
    """Max |mean gap| of fit_a from fit_b in fit_b's posterior sd; prints the worst."""
    a, b = (az.summary(f, var_names=NAMES, round_to="none") for f in (fit_a, fit_b))
    gap = (a["mean"] - b["mean"]).abs() / b["sd"]
    ratio = a["sd"] / b["sd"]
    worst = gap.sort_values(ascending=False).head(4).round(2).to_dict()
    print(
        f"{label}: max gap {gap.max():.3f} sd (median {gap.median():.3f}), sd ratio "
        f"{ratio.min():.3f} - {ratio.max():.3f}; largest {worst}",
        flush=True,
    )
    return float(gap.max())


def local_parameters(ddm, idata, count: int, rng) -> np.ndarray:
    """Cell parameters (v, a, z, t) from the posterior, `WIDEN` times as spread
    around each subject's posterior mean, inside the box."""
    post = idata.posterior.stack(sample=("chain", "draw"))
    subject = post["v"].dims[0]
    subjects = post.sizes[subject]
    rows = []
    for s in range(subjects):
        draws = np.stack(
            [
                (
                    post[n].isel({subject: s}) if subject in post[n].dims else post[n]
                ).values
                for n in ("v", "a", "z", "t")
            ],
            axis=1,
        )
        picked = draws[rng.integers(len(draws), size=count // subjects)]
        centre = draws.mean(axis=0)
        rows.append(centre + WIDEN * (picked - centre))
    lower = np.array([p.lower for p in ddm.parameters])
    upper = np.array([p.upper for p in ddm.parameters])
    margin = 1e-3 * (upper - lower)
    return np.clip(np.concatenate(rows), lower + margin, upper - margin)


def refine(ddm, estimator, idata, args, seed: int) -> TrainedEstimator:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    theta = local_parameters(ddm, idata, args.simulations, rng)
    x = np.asarray(ddm.simulate(theta, rng))
    simulated = time.perf_counter()
    theta, x = drop_invalid(theta, x)
    theta, x = subtract_shifts(estimator.metadata["network"], theta, x)
    net = copy.deepcopy(estimator.net)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(encode_for_network(ddm, x), dtype=torch.float32)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        return -net.log_prob(x_t[rows][None], theta_t[rows]).mean()

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        summary = _refine(
            list(net.parameters()),
            [net],
            loss_of,
            len(theta_t),
            desc="local refinement",
            epochs=args.epochs,
            seed=seed,
            batch_size=4096,
            learning_rate=args.learning_rate,
            progress=False,
        )
    print(
        f"  refinement: {len(theta_t)} simulations {simulated - started:.1f} s, "
        f"training {time.perf_counter() - simulated:.1f} s, validation loss "
        f"{summary['validation_loss_before']} -> {summary['validation_loss_after']}",
        flush=True,
    )
    metadata = copy.deepcopy(estimator.metadata)
    metadata["training"]["local_refinement"] = summary
    return TrainedEstimator(
        net, metadata, estimator.example_theta, estimator.example_x, source="refined"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--draws", type=int, default=500, help="and as many tuning")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--simulations", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    ddm = sbi_plugins.get_simulator("ddm")
    amortized = shipped_estimator(ddm)
    trials, _ = simulate_dataset(args.subjects, args.trials, seed=0)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} x "
        f"{args.trials} trials; 4 chains x ({args.draws} + {args.draws}); "
        f"{args.simulations} simulations x {args.epochs} epochs per round"
    )
    exact, seconds = fit(trials, "exact", None, args.draws, args.seed)
    print(f"exact fit {seconds:.0f} s", flush=True)
    previous, seconds = fit(trials, "neural", amortized, args.draws, args.seed)
    print(f"amortized fit {seconds:.0f} s", flush=True)
    agreement(previous, exact, "amortized vs exact")
    estimator = amortized
    for r in range(1, args.rounds + 1):
        started = time.perf_counter()
        estimator = refine(ddm, estimator, previous, args, seed=args.seed + r)
        refined, seconds = fit(trials, "neural", estimator, args.draws, args.seed)
        print(
            f"round {r}: refit {seconds:.0f} s, round in all "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        agreement(refined, previous, "  shift from the previous neural fit")
        agreement(refined, exact, "  refined vs exact")
        previous = refined


if __name__ == "__main__":
    main()
