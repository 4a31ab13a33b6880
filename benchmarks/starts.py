"""Which DDM configurations start: Pyro's random start (the old default) against the
start built from the data (`sbi_plugins.inference.starts`), every pooling mode of every
parameter (the others partial), with and without a fast guess, over data seeds.

    python benchmarks/starts.py [--seeds 8]

A configuration "starts" when every one of 4 chains gets a finite log density. The
old way is Pyro's `init_to_uniform` on the model without the data's ceilings (as
sampled before), given Pyro's 100 tries per chain.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pyro
from pyro.infer.mcmc.util import initialize_model

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.inference.starts import chain_starts, start_problem
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.model.model import Cells, HierarchicalModel, build_model, plan_model
from sbi_plugins.model.pooling import (
    POOLING_MODES,
)

CHAINS = 4


def trials(seed: int, fast_guess: bool):
    from sbi_plugins_ddm import simulate_dataset

    population = {"v": (0.5, 1.0), "a": (1.2, 0.4), "z": (0.5, 0.1), "t": (0.3, 0.15)}
    data = simulate_dataset(10, 100, seed=seed, population=population)[0]
    if fast_guess:
        data.loc[17, "rt"] = 0.05
    return data


def starts_old(model, kwargs) -> bool:
    try:
        for chain in range(CHAINS):
            pyro.set_rng_seed(chain)
            initialize_model(model, model_kwargs=kwargs)
    except (ValueError, RuntimeError):
        return False
    return True


def starts_new(model, kwargs, prepared, sim) -> bool:
    try:
        problem = start_problem(model, kwargs, prepared)
        chain_starts(model, kwargs, model.start(), CHAINS, 0, problem)
    except SbiPluginsError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sim = sbi_plugins.get_simulator("ddm")
    lik = Likelihood(sim)
    print("configuration (others partial)    | old: random start | new: from data")
    for fast_guess in (False, True):
        for name in sim.parameter_names:
            for mode in POOLING_MODES:
                counts = np.zeros(2, dtype=int)
                for seed in range(args.seeds):
                    data = trials(seed, fast_guess)
                    prepared = prepare_data(data, sim, "participant_id")
                    plans = plan_model(sim, data, "participant_id", {name: mode})
                    model, kwargs = build_model(plans, prepared, lik)
                    bare = HierarchicalModel(
                        plans,
                        Cells.of(plans, prepared),
                        prepared.num_groups,
                        prepared.group_dim,
                    )
                    counts += [
                        starts_old(bare, kwargs),
                        starts_new(model, kwargs, prepared, sim),
                    ]
                label = f"{name} {mode}" + (", one fast guess" if fast_guess else "")
                print(
                    f"{label:<34} | {counts[0]:>2} of {args.seeds}          "
                    f"| {counts[1]:>2} of {args.seeds}"
                )


if __name__ == "__main__":
    main()
