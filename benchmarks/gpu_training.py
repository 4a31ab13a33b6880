"""Training on a GPU: the `device=` path end to end, and its speed against the CPU.

    python benchmarks/gpu_training.py [--simulator ddm] [--out DIR] [--probe 200000]
        [--full] [--set hidden_features=128 --set num_transforms=5 ...]

1. Probe: one epoch of the main stage on `--probe` simulations on the CPU (all its
   threads) and on the GPU, same data and seed: examples per second each.
2. With `--full`: the simulator's recipe (with any `--set` overrides) trained on the
   GPU, written to DIR, reloaded on the CPU and checked to give the same
   log-densities as the network that came back from training.

Needs a CUDA build of torch and a GPU; prints what it measured.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import sbi_plugins
from sbi_plugins.estimators.artifact import load
from sbi_plugins.estimators.training import train
from sbi_plugins.likelihoods.distribution import Likelihood


def parse_overrides(items: list[str]) -> dict:
    overrides: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def probe(sim, n: int) -> None:
    for device in ("cpu", "cuda"):
        start = time.perf_counter()
        est = train(
            sim,
            num_simulations=n,
            max_num_epochs=1,
            stop_after_epochs=1,
            seed=0,
            progress=False,
            device=device,
            options=dict(sim.recipe.options)
            | {"choice_simulations": 0, "flow_simulations": 0},
        )
        seconds = est.metadata["training"]["training_seconds"]
        print(
            f"probe {device:>4}: {n * 0.9 / seconds:,.0f} examples/s "
            f"({seconds:.1f} s for one epoch, {time.perf_counter() - start:.1f} s all)"
        )


def full(sim, out: Path, overrides: dict) -> None:
    options = dict(sim.recipe.options) | overrides.pop("options", {})
    start = time.perf_counter()
    est = train(sim, seed=2025, device="cuda", options=options, **overrides)
    print(f"full recipe on cuda: {time.perf_counter() - start:.1f} s")
    print(est.metadata["training"])
    path = est.save(out / f"{sim.name}-cuda.pt", overwrite=True)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    loaded = load(path, sim)
    assert all(p.device.type == "cpu" for p in loaded.net.parameters())
    rng = np.random.default_rng(0)
    theta = rng.uniform(sim.lower, sim.upper, size=(256, len(sim.parameters)))
    x = torch.as_tensor(sim.simulate(theta, rng), dtype=torch.float64)
    theta_t = torch.as_tensor(theta)
    ok = torch.isfinite(x).all(-1)
    a = Likelihood(sim, est).log_prob(theta_t[ok], x[ok])
    b = Likelihood(sim, loaded).log_prob(theta_t[ok], x[ok])
    print("reloaded on the CPU, max |log p difference|:", float((a - b).abs().max()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulator", default="ddm")
    parser.add_argument("--out", default=".")
    parser.add_argument("--probe", type=int, default=200_000)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch: nothing to measure")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    sim = sbi_plugins.get_simulator(args.simulator)
    if args.probe:
        probe(sim, args.probe)
    if args.full:
        full(sim, Path(args.out), parse_overrides(args.set))


if __name__ == "__main__":
    main()
