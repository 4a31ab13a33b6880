"""How big a large fit's InferenceData is, group by group, in memory and on disk.

    python benchmarks/result_size.py [--subjects 150 --trials 124]
        [--chains 4 --draws 1000] [--likelihood exact|neural]

The large study's data (`large_study.study`: subjects x 2 conditions x trials per
condition, 150 x 2 x 124 = 37,200 rows by default) and its regression model, with
the InferenceData assembled by the very code `fit` uses (`pointwise_log_likelihood`,
`predictive_draws`, `simulate_predictive`, `build_inference_data`) and written by
the CLI's writer (`sbi_plugins.cli._write_netcdf`: ArviZ's `to_netcdf`, zlib).

No sampler runs: what the sizes depend on is the shapes, so the posterior draws are
the model's start (`HierarchicalModel.start`) jittered by 0.05 on Pyro's
unconstrained scale, a posterior's width at this size, at every chain and draw.
The log-likelihood values then vary across draws as a fitted posterior's do, which
is what their compression depends on.

Printed per group: its size in memory and its compressed size inside the netCDF
file (h5py's storage size of its variables), the file's total, and PSIS-LOO from
the log-likelihood kept with the Monte Carlo sd of its elpd (what thinning costs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import arviz as az
import h5py
import numpy as np
import torch
from large_study import FORMULAS, study
from memory import PeakMemory, tree_pss_mib
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model

import sbi_plugins
from sbi_plugins.cli import _write_netcdf
from sbi_plugins.data import condition_columns, prepare_data
from sbi_plugins.inference.nuts import STAT_DTYPES
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.results.idata import build_inference_data
from sbi_plugins.results.pointwise import (
    elpd_monte_carlo_sd,
    log_likelihood_draw_index,
    pointwise_log_likelihood,
)
from sbi_plugins.results.predictive import predictive_draws, simulate_predictive

JITTER = 0.05
"""Posterior sd on the unconstrained scale the synthetic draws get."""


def posterior_like_draws(model, model_kwargs, chains: int, draws: int, seed: int):
    """Site draws `(chain, draw, ...)`: the model's start, jittered on Pyro's
    unconstrained scale and mapped back, so every draw is inside the support."""
    _, _, transforms, _ = initialize_model(
        model,
        model_kwargs=dict(model_kwargs),
        max_plate_nesting=1,
        init_strategy=init_to_value(values=model.start()),
    )
    start = model.start()
    generator = torch.Generator().manual_seed(seed)
    raw = {}
    for name, value in start.items():
        transform = transforms[name]
        free = transform(value.double())
        noise = torch.randn((chains, draws, *free.shape), generator=generator)
        raw[name] = transform.inv(free + JITTER * noise.double()).numpy()
    return raw


def sample_stats(chains: int, draws: int, seed: int) -> dict[str, np.ndarray]:
    """NUTS's statistics in their dtypes, with plausible values."""
    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    return {
        "diverging": np.zeros(shape, dtype=bool),
        "energy": rng.normal(5000, 20, shape),
        "lp": rng.normal(-5000, 20, shape),
        "step_size": np.full(shape, 0.3),
        "n_steps": rng.choice([15, 31], shape),
        "tree_depth": rng.choice([4, 5], shape),
        "acceptance_rate": rng.uniform(0.6, 1, shape),
    }


def storage_mib(path: Path) -> dict[str, float]:
    """Compressed bytes of each top-level group's variables in the file, MiB."""
    with h5py.File(path, "r") as f:
        return {
            group: sum(
                f[group][name].id.get_storage_size()
                for name in f[group]
                if isinstance(f[group][name], h5py.Dataset)
            )
            / 2**20
            for group in f
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--trials", type=int, default=124, help="per condition")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--likelihood", choices=["exact", "neural"], default="exact")
    parser.add_argument(
        "--posterior-predictive",
        type=int,
        metavar="DRAWS",
        help="draws per chain simulated (default: fit's, at most 2 million rows); "
        "more is simulated while it is written, and the peak memory of writing shows "
        "that it never is whole in memory",
    )
    parser.add_argument(
        "--log-likelihood-draws",
        default="auto",
        help="draws per chain the log-likelihood keeps: auto (fit's default), all or N",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sim = sbi_plugins.get_simulator("ddm")
    frame = study(args.subjects, args.trials)
    group = "participant_id"
    prepared = prepare_data(frame, sim, group)
    parameters = plan_model(sim, frame, group, "complete", FORMULAS)
    lik = (
        Likelihood(sim)
        if args.likelihood == "exact"
        else Likelihood(sim, sbi_plugins.runner.resolve_estimator(sim, None))
    )
    model, model_kwargs = build_model(parameters, prepared, lik)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(prepared.x)} "
        f"rows ({args.subjects} x 2 x {args.trials}), {args.chains} chains x "
        f"{args.draws} draws, {args.likelihood} likelihood",
        flush=True,
    )
    raw = posterior_like_draws(model, model_kwargs, args.chains, args.draws, 1)
    raw = model.complete_draws(raw)
    theta = model.cell_parameter_draws(raw)
    shape = theta.shape[:2]
    request = args.log_likelihood_draws
    request = (
        True if request == "auto" else args.draws if request == "all" else int(request)
    )
    kept = log_likelihood_draw_index(request, shape, len(prepared.x))
    start = time.perf_counter()
    log_likelihood = pointwise_log_likelihood(
        lik, theta[:, kept], prepared.x, model.cells.index
    )
    print(
        f"log-likelihood: {len(kept)} draws per chain kept, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    cells = dataclasses.replace(prepared, group_index=model.cells.index)
    wanted = args.posterior_predictive
    selected = predictive_draws(wanted or True, shape, len(prepared.x))
    start = time.perf_counter()
    predictive = simulate_predictive(sim, theta, cells, 1, selected, workers=1)
    print(
        f"posterior predictive: {len(selected)} draws per chain, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    posterior, dims, coords = model.posterior_variables(raw)
    stats = sample_stats(*shape, 2)
    assert set(stats) == set(STAT_DTYPES)
    idata = build_inference_data(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood=log_likelihood,
        log_likelihood_draw_index=kept,
        posterior_predictive=predictive,
        predictive_draw_index=selected,
        data=prepared,
        simulator=sim,
        attrs={"simulator": sim.name},
        dims=dims,
        coords=coords,
        conditions=condition_columns(frame, sim, group),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fit.nc"
        start, before = time.perf_counter(), tree_pss_mib()
        with PeakMemory(interval=0.1) as peak:
            _write_netcdf(idata, path)
        written = time.perf_counter() - start
        on_disk = storage_mib(path)
        total = path.stat().st_size / 2**20
    print(f"{'group':<22}{'memory MiB':>12}{'on disk MiB':>13}")
    for name in idata.groups():
        memory = idata[name].nbytes / 2**20
        print(f"{name:<22}{memory:12.1f}{on_disk.get(name, 0):13.1f}")
    print(f"{'file':<22}{'':>12}{total:13.1f}   (written in {written:.0f} s)")
    lazy = "" if isinstance(predictive["rt"], np.ndarray) else ", simulated as written"
    print(
        f"memory while writing: {before:.0f} MiB before, peak {peak.mib:.0f} MiB "
        f"(posterior predictive {idata.posterior_predictive.nbytes / 2**20:.0f} MiB "
        f"whole{lazy})"
    )
    loo = az.loo(idata)
    noise = elpd_monte_carlo_sd(log_likelihood)
    print(
        f"PSIS-LOO from the kept draws: elpd {loo.elpd_loo:.1f}, se {loo.se:.1f}; "
        f"Monte Carlo sd of the elpd from these draws {noise:.2f}"
    )


if __name__ == "__main__":
    main()
