"""Simulation and training throughput of the shipped recipes.

    OMP_NUM_THREADS=1 python benchmarks/training_throughput.py [--simulations 200000]

Per built-in simulator: simulations per second (seeded chunks, one process),
training examples per second (the recipe's network, two epochs on a slice of the
simulations, refinement stages left out), and the time the shipped artifact's own
training took (all stages), as recorded in its metadata. Training throughput times
the recipe's epochs and simulation count gives the main stage's time on this
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import torch

import sbi_plugins
from sbi_plugins.estimators.resolve import shipped_estimator
from sbi_plugins.estimators.training import TRAINING_OPTIONS, simulate_training_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulations", type=int, default=200_000)
    parser.add_argument("--train-rows", type=int, default=100_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}"
    )
    for name in ("cookie", "ddm"):
        sim = sbi_plugins.get_simulator(name)
        start = time.perf_counter()
        simulate_training_data(sim, args.simulations, seed=0, progress=False)
        sim_rate = args.simulations / (time.perf_counter() - start)
        network_only = {  # the main stage alone: no refinement stages
            k: v for k, v in sim.recipe.options.items() if k not in TRAINING_OPTIONS
        }
        trained = sbi_plugins.train(
            sim,
            num_simulations=args.train_rows,
            max_num_epochs=2,
            options=network_only,
            progress=False,
        )
        seconds = trained.metadata["training"]["training_seconds"]
        train_rate = 2 * 0.9 * args.train_rows / seconds  # sbi holds 10% out
        recipe = sim.recipe
        shipped = shipped_estimator(sim).metadata["training"]
        print(
            f"{name:>6}: simulate {sim_rate:12,.0f} sims/s; train "
            f"{train_rate:9,.0f} examples/s; recipe {recipe.num_simulations:,} sims x "
            f"{recipe.max_num_epochs} epochs, estimated "
            f"{recipe.num_simulations * recipe.max_num_epochs * 0.9 / train_rate:6.0f}"
            f" s here; shipped artifact took {shipped['simulation_seconds']:.0f} s "
            f"simulating + {shipped['training_seconds']:.0f} s training"
        )


if __name__ == "__main__":
    main()
