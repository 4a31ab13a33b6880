"""HSSM's half of `hssm_side_by_side.py`: run by HSSM's own Python, not ours.

    /work/hssm-venv/bin/python benchmarks/hssm_runner.py data.csv out.npz \
        --chains 4 --draws 1000 --tune 1000 --seed 1 [--formula v="v ~ 1 + ..."]

Fits HSSM's analytic DDM (`loglik_kind="analytical"`) with every parameter by
subject, HSSM's way (`p ~ 1 + (1|participant_id)`, non-centered), no lapse
component (`p_outlier=None`, as our fits), sampled by numpyro's NUTS
(`sampler="numpyro"`, PyMC's default `chain_method="parallel"`). Parallel chains
need one XLA host device per chain, which the parent sets with
`XLA_FLAGS=--xla_force_host_platform_device_count=<chains>` (PyMC's own setting
comes too late: HSSM imports JAX first, and numpyro then draws the chains one
after another). Writes the posterior draws, divergences and leapfrog steps to
`out.npz` and the timings and HSSM's priors to `out.json`; the parent computes
every statistic with its own ArviZ, so all fits are measured the same way.
Imports nothing from sbi-plugins.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import hssm  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

IMPORTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--formula",
        action="append",
        default=[],
        help='name="formula" for a parameter (default: p ~ 1 + (1|participant_id))',
    )
    args = parser.parse_args()
    data = pd.read_csv(args.data)
    formulas = {p: f"{p} ~ 1 + (1|participant_id)" for p in ("v", "a", "z", "t")}
    formulas.update(dict(item.split("=", 1) for item in args.formula))
    start = time.perf_counter()
    model = hssm.HSSM(
        data,
        model="ddm",
        loglik_kind="analytical",
        include=[{"name": p, "formula": f} for p, f in formulas.items()],
        p_outlier=None,
    )
    built = time.perf_counter()
    idata = model.sample(
        sampler="numpyro",
        chains=args.chains,
        draws=args.draws,
        tune=args.tune,
        random_seed=args.seed,
        progressbar=False,
    )
    done = time.perf_counter()
    posterior = {
        name: idata.posterior[name].values for name in idata.posterior.data_vars
    }
    np.savez(
        args.out,
        **{f"posterior/{k}": v for k, v in posterior.items()},
        diverging=idata.sample_stats["diverging"].values,
        n_steps=idata.sample_stats["n_steps"].values,
    )
    timings = {
        "import_s": IMPORTED - START,
        "build_s": built - start,
        "sample_s": done - built,
        "sampling_time_s": float(idata.posterior.attrs.get("sampling_time", "nan")),
        "fit_s": done - start,
        "hssm": hssm.__version__,
        "priors": {name: str(prior) for name, prior in _priors(model).items()},
    }
    with open(args.out.removesuffix(".npz") + ".json", "w") as f:
        json.dump(timings, f)


def _priors(model: hssm.HSSM) -> dict:
    """Each parameter's priors as HSSM states them (they differ from ours)."""
    return {name: param.prior for name, param in model.params.items()}


if __name__ == "__main__":
    main()
