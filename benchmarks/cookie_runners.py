"""Cookie hierarchical model three ways, side by side in one run (issue 5, item 1).

    python benchmarks/cookie_runners.py [--draws 1000 --tune 1000 --chains 4]
        [--seeds 2025 2026 2027 --talk-seeds 2]

1. `sbi_plugins.fit` with the shipped categorical estimator (neural runner);
2. the same call with `likelihood="exact"` (Poisson);
3. the talk-style model written by hand with sbi and Pyro, as in the EuroSciPy 2025
   talk: the estimator wrapped by `sbi.utils.pyroutils.to_pyro_distribution`, called
   per observation inside `pyro.plate`, a domain guard as a `pyro.factor`, Pyro's
   own `MCMC` (chains in its processes, no JIT).

All three see the same data, priors (Gamma population with mean mu and sd sigma,
mu ~ Gamma(2, 0.2), sigma ~ Exponential(1)), seeds and sampler settings. The figure
is time per effective sample: wall time over the smallest bulk ESS. The smallest
ESS of one run varies by about 15% from seed to seed, so with several seeds the
figure is total wall time over total ESS (each seed's line is printed too); the
slow talk-style model may run on only the first `--talk-seeds` of them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import arviz as az
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from sbi.utils.pyroutils import to_pyro_distribution
from sbi_plugins_cookie import example_data

import sbi_plugins
from sbi_plugins.estimators.resolve import shipped_estimator


def talk_style_fit(args: argparse.Namespace, seed: int) -> az.InferenceData:
    """The straightforward hand-written model (only the guard added)."""
    cookie = sbi_plugins.get_simulator("cookie")
    net = shipped_estimator(cookie).net
    data = example_data()
    chips = torch.tensor(data["chips"].to_numpy(), dtype=torch.float32)[:, None]
    location = torch.tensor(data["location"].to_numpy() - 1)
    low, high = cookie.parameters[0].lower, cookie.parameters[0].upper

    def model(chips, location):
        mu = pyro.sample("lam_mu", dist.Gamma(2.0, 0.2))
        sigma = pyro.sample("lam_sigma", dist.Exponential(1.0))
        with pyro.plate("location", 5):
            lam = pyro.sample("lam", dist.Gamma(mu**2 / sigma**2, mu / sigma**2))
        inside = ((lam >= low) & (lam <= high)).all()
        pyro.factor("domain_guard", torch.where(inside, 0.0, -torch.inf))
        with pyro.plate("cookies", len(chips)):
            theta = lam.clamp(low, high)[location][:, None]
            pyro.sample("chips", to_pyro_distribution(net, theta), obs=chips)

    pyro.set_rng_seed(seed)
    mcmc = MCMC(
        NUTS(model),
        num_samples=args.draws,
        warmup_steps=args.tune,
        num_chains=args.chains,
        mp_context="fork" if args.chains > 1 else None,
        disable_progbar=True,
    )
    mcmc.run(chips, location)
    return az.from_pyro(mcmc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026, 2027])
    parser.add_argument("--talk-seeds", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.chains} chains "
        f"x ({args.tune} + {args.draws}); 150 cookies, 5 locations; "
        f"seeds {args.seeds}"
    )

    def runner(likelihood: str):
        return lambda seed: sbi_plugins.fit(
            example_data(),
            "cookie",
            group="location",
            likelihood=likelihood,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=seed,
            progress=False,
        )

    talk_seeds = args.seeds[: args.talk_seeds]
    runs = {
        "neural runner": (runner("neural"), args.seeds),
        "exact runner": (runner("exact"), args.seeds),
        "talk-style": (lambda seed: talk_style_fit(args, seed), talk_seeds),
    }
    per_ess = {}
    for name, (run, seeds) in runs.items():
        if not seeds:  # --talk-seeds 0: the talk-style model is not run
            continue
        total_seconds = total_ess = 0.0
        for seed in seeds:
            start = time.perf_counter()
            idata = run(seed)
            seconds = time.perf_counter() - start
            summary = az.summary(idata, var_names=["lam", "lam_mu", "lam_sigma"])
            ess = summary["ess_bulk"].min()
            total_seconds, total_ess = total_seconds + seconds, total_ess + ess
            print(
                f"{name:>14} seed {seed}: {seconds:7.1f} s wall, min ESS {ess:6.0f}, "
                f"{seconds / ess * 1000:7.2f} ms per effective sample, lam_mu "
                f"{summary.loc['lam_mu', 'mean']:.2f} +- "
                f"{summary.loc['lam_mu', 'sd']:.2f}"
            )
        per_ess[name] = total_seconds / total_ess
        print(
            f"{name:>14} all: {total_seconds:7.1f} s, ESS {total_ess:6.0f}, "
            f"{per_ess[name] * 1000:7.2f} ms per effective sample"
        )
    print(
        f"\nneural / exact per effective sample: "
        f"{per_ess['neural runner'] / per_ess['exact runner']:.2f} (target <= 1.5)"
    )
    if "talk-style" in per_ess:
        print(
            f"talk-style / neural per effective sample: "
            f"{per_ess['talk-style'] / per_ess['neural runner']:.2f} (target >= 3)"
        )


if __name__ == "__main__":
    main()
