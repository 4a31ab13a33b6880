"""Cost of one NUTS gradient step: the model's potential and its gradient, exact vs
neural likelihood, on the benchmark data sets.

    OMP_NUM_THREADS=1 python benchmarks/gradient_cost.py [--repeats 3]

Builds the very model `fit` samples and times `potential_grad` at the initial
point, exact and neural interleaved in one process, so the ratio holds even on a
busy machine: Pyro's potential under its JIT (what short fits use), and the
written-out potential compiled with `torch.compile` (what long fits use, see
`sbi_plugins.model.potential`). Wall time of a fit is
mostly this times the number of leapfrog steps; the ratio neural/exact here is the
floor of the fits' time ratio. The DDM is timed with `v` and `a` by subject (the
earlier benchmarks' model), with every parameter by subject (the default), and with
that plus a lapse component (`p_outlier=0.05`): those two rows give the cost of
`p_outlier` per gradient. The formula rows set a formula model beside the pooling
model of the same data: `v` regressed on condition with a subject-level slope at 10
x 100, and `benchmarks/large_study.py`'s regression study (150 x 2 x 120 = 36,000
rows) beside v, a, t by subject on the same trials. `--studies` picks rows by label.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import large_study
import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.estimators.resolve import shipped_estimator
from sbi_plugins.inference.compile import compiled_potential
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import make_lapse
from sbi_plugins.model.model import build_model, plan_model

V_A = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}
FORMULA = {"v": "v ~ 1 + C(condition) + (1 + C(condition)|participant_id)"}
LARGE_POOLING = {"v": "partial", "a": "partial", "z": "complete", "t": "partial"}
LARGE_FORMULAS = large_study.FORMULAS
STUDIES = {
    "cookie": ("cookie", "partial", None, None),
    "ddm v,a by subject": ("ddm", V_A, None, None),
    "ddm all by subject": ("ddm", "partial", None, None),
    "ddm all, p_outlier": ("ddm", "partial", 0.05, None),
    "ddm v formula": ("ddm", "partial", None, FORMULA),
    "large, v a t by subject": ("ddm", LARGE_POOLING, None, None),
    "large, regression": ("ddm", "complete", None, LARGE_FORMULAS),
}


def study(label: str, name: str):
    if name == "cookie":
        from sbi_plugins_cookie import example_data

        return example_data(), "location"
    if label.startswith("large"):
        return large_study.study(150, 120), "participant_id"
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(10, 100, seed=0)
    trials["condition"] = ["easy", "hard"] * (len(trials) // 2)
    return trials, "participant_id"


def potential(label: str, kind: str, compiled: bool = False):
    name, pooling, p_outlier, formulas = STUDIES[label]
    sim = sbi_plugins.get_simulator(name)
    data, group = study(label, name)
    prepared = prepare_data(data, sim, group)
    plans = plan_model(sim, data, group, pooling, formulas)
    lik = (
        Likelihood(sim) if kind == "exact" else Likelihood(sim, shipped_estimator(sim))
    )
    model, kwargs = build_model(
        plans, prepared, lik, make_lapse(p_outlier, sim, prepared.x)
    )
    start = model.start()
    pyro.set_rng_seed(0)
    init, fn, _, _ = initialize_model(
        model,
        model_kwargs=kwargs,
        jit_compile=True,
        skip_jit_warnings=True,
        init_strategy=init_to_value(values=start),
    )
    params = {k: v.detach() for k, v in init.items()}
    if compiled:
        fn = compiled_potential(model, kwargs, [start])
    for _ in range(50):  # tracing and the JIT's profiling runs
        potential_grad(fn, params)
    return fn, params


def cpu_ms(fn, params, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        potential_grad(fn, params)
    return (time.process_time() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), metavar="LABEL")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch thread")
    for name in args.studies:
        for compiled in (False, True):
            built = {
                kind: potential(name, kind, compiled) for kind in ("exact", "neural")
            }
            for fn, params in built.values():
                potential_grad(fn, params)  # any first-call work, outside the timing
            times = {"exact": [], "neural": []}
            for _ in range(args.repeats):
                for kind, (fn, params) in built.items():
                    times[kind].append(cpu_ms(fn, params, args.evaluations))
            exact, neural = min(times["exact"]), min(times["neural"])
            how = "compiled" if compiled else "Pyro JIT"
            print(
                f"{name:>23}, {how:>8}: exact {exact:.3f} ms, neural {neural:.3f} ms "
                f"per potential + gradient (best of {args.repeats}); neural / exact "
                f"{neural / exact:.2f}"
            )


if __name__ == "__main__":
    main()
