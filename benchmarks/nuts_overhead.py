"""NUTS's own cost per leapfrog step against the number of sample sites.

    python benchmarks/nuts_overhead.py [--dims 27] [--sites 1 6 12 24]

A standard normal of `--dims` dimensions split into `--sites` sample sites, its
potential written out (next to nothing to compute), so what is timed is the
sampler: Pyro's NUTS moving the sites as they are (the baseline), and this
library's kernel
(`sbi_plugins.inference.nuts.RecordingNUTS`), which moves them as one flat
vector (`sbi_plugins.inference.flat`), its potential given site by site (as
Pyro's own potential of a model is) or in one call of the vector (as the compiled
potential is). Fixed step size and tree depth, no
adaptation, one thread: both take the same trees, so the seconds per potential
call compare the bookkeeping alone.
"""

from __future__ import annotations

import argparse
import platform
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import NUTS
from pyro.infer.autoguide.initialization import init_to_value

from sbi_plugins.inference.flat import FlatLayout
from sbi_plugins.inference.nuts import RecordingNUTS


def split_normal(dims: int, sites: int):
    """The model (for this library's kernel, which sets itself up from one), its
    potential written out site by site, and its sites' starting values."""
    sizes = [dims // sites + (1 if i < dims % sites else 0) for i in range(sites)]
    names = [f"s{i:02d}" for i in range(sites)]

    def model() -> None:
        for name, size in zip(names, sizes, strict=True):
            pyro.sample(name, dist.Normal(torch.zeros(size), 1.0).to_event(1))

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * (params[n] ** 2).sum() for n in names)

    start = {n: torch.full((size,), 0.1) for n, size in zip(names, sizes, strict=True)}
    return model, potential, start


def ms_per_step(kernel, start, draws: int) -> tuple[float, int]:
    """Wall milliseconds per potential evaluation (one per leapfrog step) and
    the number of evaluations."""
    pyro.set_rng_seed(0)
    kernel.setup(warmup_steps=0)
    calls = [0]
    inner = kernel.potential_fn

    def counted(params):
        calls[0] += 1
        return inner(params)

    kernel.potential_fn = counted
    params = kernel.initial_params
    started = time.perf_counter()
    for _ in range(draws):
        params = kernel.sample(params)
    return 1e3 * (time.perf_counter() - started) / calls[0], calls[0]


class OneCall:
    """The same potential as one call of the flat vector, as the compiled
    potential is (`sbi_plugins.inference.compile.CompiledPotential`)."""

    def __init__(self, start: dict[str, torch.Tensor]) -> None:
        self.layout = FlatLayout.of(start)

    def flat(self, flat: torch.Tensor) -> torch.Tensor:
        return 0.5 * (flat**2).sum()

    def __call__(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.flat(self.layout.flatten(params))


SETTINGS = {
    "step_size": 0.05,
    "adapt_step_size": False,
    "adapt_mass_matrix": False,
    "max_tree_depth": 6,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, default=27)
    parser.add_argument("--sites", type=int, nargs="+", default=[1, 6, 12, 24])
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, one thread; {args.dims} dimensions")
    for sites in args.sites:
        model, potential, start = split_normal(args.dims, sites)
        pyro_nuts = NUTS(potential_fn=potential, **SETTINGS)
        pyro_nuts.initial_params = start
        pyro_ms, steps = ms_per_step(pyro_nuts, start, args.draws)
        ours = {}
        for form, given in (("site by site", potential), ("one call", OneCall(start))):
            kernel = RecordingNUTS(
                model,
                potential=given,
                init_strategy=init_to_value(values=start),
                jit_compile=False,
                **SETTINGS,
            )
            ours[form], _ = ms_per_step(kernel, start, args.draws)
        print(
            f"{sites:3d} sites ({steps} steps): Pyro's NUTS {pyro_ms:.3f} ms per step; "
            f"flat vector, potential site by site {ours['site by site']:.3f} ms "
            f"({ours['site by site'] / pyro_ms:.2f}), potential in one call "
            f"{ours['one call']:.3f} ms ({ours['one call'] / pyro_ms:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
