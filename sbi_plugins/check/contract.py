"""The contract section of `sbi-plugins check`: what `simulate`, the training prior
and the exact log-likelihood return, checked on a batch from the training prior
before anything is trained or fitted on them."""

from __future__ import annotations

import numpy as np
import torch

from sbi_plugins.check.report import FAIL, PASS, SKIP, WARN, CheckReport
from sbi_plugins.contract import Simulator, outside_support

MAX_INVALID_FRACTION = 0.01
"""More NaN or infinite simulations than this fails; fewer only warns (training drops
them, which conditions the learned likelihood on a valid output)."""


def describe_box(simulator: Simulator) -> str:
    """The training box in words, e.g. `mu [-2, 2], sigma [0.5, 2]`."""
    return ", ".join(
        f"{p.name} [{p.lower:g}, {p.upper:g}]" for p in simulator.parameters
    )


def check_contract(
    report: CheckReport, simulator: Simulator, simulations: int, seed: int
) -> None:
    """Run `simulate` on a batch from the training prior and check what comes back;
    the exact likelihood is checked on the rows that are finite and in support."""
    section = "contract"
    n, n_par, n_obs = simulations, len(simulator.parameters), len(simulator.observables)
    report.add(
        section,
        "declaration",
        PASS,
        f"parameters {describe_box(simulator)}; observables "
        + ", ".join(f"{o.name} ({o.kind})" for o in simulator.observables)
        + f"; contract version {simulator.contract_version}",
        parameters=simulator.parameter_names,
        observables=simulator.observable_names,
    )
    try:
        theta = np.asarray(
            simulator.sample_training_prior(n, np.random.default_rng([seed, 0])),
            dtype=float,
        )
    except Exception as exc:
        report.add(
            section,
            "training prior",
            FAIL,
            f"sample_training_prior raised {type(exc).__name__}: {exc}",
        )
        return
    problem = None
    if theta.shape != (n, n_par):
        problem = f"returned shape {theta.shape}; expected ({n}, {n_par})"
    else:
        outside_box = ~((theta >= simulator.lower) & (theta <= simulator.upper))
        if outside_box.any():
            problem = (
                f"{int(outside_box.any(axis=1).sum())} draws lie outside the box "
                f"{describe_box(simulator)}, where the estimator is not trained"
            )
    if problem:
        report.add(
            section, "training prior", FAIL, f"sample_training_prior({n}) {problem}"
        )
        return
    report.add(
        section, "training prior", PASS, f"{n} draws, all inside the box", draws=n
    )

    def run(rng_seed: list[int]) -> np.ndarray:
        return np.asarray(
            simulator.simulate(theta.copy(), np.random.default_rng(rng_seed))
        )

    given = theta.copy()
    try:
        raw = np.asarray(simulator.simulate(given, np.random.default_rng([seed, 1])))
    except Exception as exc:
        report.add(
            section,
            "shape and dtype",
            FAIL,
            f"simulate raised {type(exc).__name__}: {exc}",
        )
        return
    problems = []
    if raw.shape != (n, n_obs):
        problems.append(
            f"returned shape {raw.shape} for {n} parameter rows; expected {(n, n_obs)} "
            f"(one row per parameter row, one column per observable "
            f"{simulator.observable_names})"
        )
    if not (
        np.issubdtype(raw.dtype, np.floating)
        or np.issubdtype(raw.dtype, np.integer)
        or raw.dtype == np.bool_
    ):
        problems.append(f"returned dtype {raw.dtype}; expected real numbers")
    if not np.array_equal(given, theta):
        problems.append(
            "changed its theta argument in place; work on a copy (training pairs "
            "each parameter row with its output)"
        )
    if problems:
        report.add(section, "shape and dtype", FAIL, "simulate " + "; ".join(problems))
        return
    report.add(
        section,
        "shape and dtype",
        PASS,
        f"simulate({n} x {n_par}) -> {raw.shape} {raw.dtype}",
        shape=list(raw.shape),
        dtype=str(raw.dtype),
    )
    x = raw.astype(float)

    invalid = ~np.isfinite(x)
    rows = invalid.any(axis=1)
    share = rows.mean()
    per_obs = {
        o.name: int(invalid[:, j].sum()) for j, o in enumerate(simulator.observables)
    }
    status = PASS if not rows.any() else WARN if share <= MAX_INVALID_FRACTION else FAIL
    message = f"{int(rows.sum())} of {n} simulations NaN or infinite"
    if rows.any():
        where = ", ".join(f"{k}: {v}" for k, v in per_obs.items() if v)
        worst = theta[rows][:3].round(4).tolist()
        message += (
            f" ({where}; e.g. at theta {worst}); training drops them, so the learned "
            "likelihood ignores those outcomes"
            + (
                f"; more than {MAX_INVALID_FRACTION:.0%} fails"
                if status == FAIL
                else ""
            )
        )
    report.add(
        section,
        "finite outputs",
        status,
        message,
        invalid=int(rows.sum()),
        per_observable=per_obs,
    )

    outside = outside_support(simulator, x)
    if outside.any():
        detail = "; ".join(
            f"{o.name}: {int(outside[:, j].sum())} values such as "
            f"{np.unique(x[outside[:, j], j])[:3].tolist()} outside "
            + (
                f"codes {list(o.codes)}"
                if o.kind == "choice"
                else f"integers in [{o.lower:g}, {o.upper:g}]"
                if o.kind == "count"
                else f"({o.lower:g}, {o.upper:g})"
            )
            for j, o in enumerate(simulator.observables)
            if outside[:, j].any()
        )
        report.add(
            section,
            "support",
            FAIL,
            f"{detail}; the data checks refuse such values, so declare the support "
            "the simulator really has",
            outside=int(outside.any(axis=1).sum()),
        )
    else:
        report.add(
            section, "support", PASS, "every finite value inside its declared support"
        )

    try:
        again, other = run([seed, 1]), run([seed, 2])
    except Exception as exc:
        report.add(
            section, "determinism", FAIL, f"simulate raised {type(exc).__name__}: {exc}"
        )
        return
    if again.shape != raw.shape or not np.array_equal(again, raw, equal_nan=True):
        report.add(
            section,
            "determinism",
            FAIL,
            "the same seed gave different output: draw all randomness from the rng "
            "argument (not np.random.*, random or torch's global generator)",
        )
    elif other.shape == raw.shape and np.array_equal(other, raw, equal_nan=True):
        report.add(
            section,
            "determinism",
            WARN,
            "the same output for two different seeds: is the simulator deterministic? "
            "A likelihood needs noise",
        )
    else:
        report.add(
            section,
            "determinism",
            PASS,
            "same seed, same output; another seed, another",
        )

    keep = ~rows & ~outside.any(axis=1)
    check_exact(report, simulator, theta[keep], x[keep])


def check_exact(
    report: CheckReport, simulator: Simulator, theta: np.ndarray, x: np.ndarray
) -> None:
    """The exact log-likelihood explains what the simulator produced: finite values
    of shape (n,) and finite gradients (NUTS needs them with likelihood='exact')."""
    if simulator.log_likelihood is None:
        report.add(
            "contract",
            "exact likelihood",
            SKIP,
            "none registered: the estimator is checked on held-out simulations only",
        )
        return
    if not len(x):
        report.add(
            "contract", "exact likelihood", SKIP, "no valid simulations to score"
        )
        return
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    try:
        lp = simulator.log_likelihood(t, torch.tensor(x, dtype=torch.float64))
        lp = torch.as_tensor(lp)
        if lp.shape != (len(x),):
            raise ValueError(f"returned shape {tuple(lp.shape)}, expected ({len(x)},)")
        finite = torch.isfinite(lp)
        grad = None
        if lp.requires_grad and finite.any():
            (grad,) = torch.autograd.grad(lp[finite].sum(), t, allow_unused=True)
    except Exception as exc:
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            f"log_likelihood(theta, x) raised {type(exc).__name__}: {exc}",
        )
        return
    bad = int((~finite).sum())
    if bad:
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            f"-inf or NaN for {bad} of {len(x)} simulations it should explain; check "
            "it against simulate (parameter order, observable columns, support)",
            non_finite=bad,
        )
    elif grad is None or not torch.isfinite(grad).all():
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            "no finite gradient in theta: write it with differentiable torch "
            "operations (NUTS needs gradients for likelihood='exact')",
        )
    else:
        report.add(
            "contract",
            "exact likelihood",
            PASS,
            f"finite, with finite gradients, on all {len(x)} valid simulations",
        )
