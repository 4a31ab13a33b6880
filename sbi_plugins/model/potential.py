"""The hierarchical model's potential energy, written out from its plans and compiled.

NUTS needs the potential (minus the log joint density in unconstrained space) and
its gradient at every leapfrog step. Pyro gets it by tracing the model; under its
JIT that is hundreds of tiny tensor operations forward and backward, and their
per-call overhead (a few microseconds each), not arithmetic, made up most of a DDM
step. `torch.compile` fuses such work into a few C++ loops, but only from one clean
graph, which Pyro's tracing (messengers, plates, trace bookkeeping) does not give.
The model is small and fixed (hyperparameters, group values, one likelihood over
rows), so its log joint density is written out here: the same distributions, the
transforms Pyro's own set-up chose, the same sum; tests hold it equal to Pyro's
potential and gradient, and the compiled one to the uncompiled one.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pyro
import pyro.util
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.transforms import Transform

from sbi_plugins.likelihoods.lapse import SITE as LAPSE_SITE
from sbi_plugins.likelihoods.lapse import mix
from sbi_plugins.model.distributions import as_pyro

if TYPE_CHECKING:
    from sbi_plugins.likelihoods.distribution import Likelihood
    from sbi_plugins.model.pooling import HierarchicalModel


def _unchecked(distribution: Distribution) -> Distribution:
    """A copy that skips validating its values: the checks branch on tensor values,
    which a compiled graph cannot hold, and NUTS's values are in the support by
    construction (the transforms map onto it)."""
    quiet = copy.copy(distribution)
    quiet._validate_args = False
    return quiet


class HierarchicalPotential:
    """`unconstrained values -> -log joint`, Pyro's potential for `model` given the
    data, with `transforms` as Pyro's `initialize_model` made them (constrained to
    unconstrained, per site)."""

    def __init__(
        self,
        model: HierarchicalModel,
        transforms: Mapping[str, Transform],
        x: Tensor,
        group_index: Tensor,
        likelihood: Likelihood,
    ) -> None:
        self.model, self.transforms = model, dict(transforms)
        self.x, self.group_index, self.likelihood = x, group_index, likelihood
        self.hyperpriors = {
            f"{plan.name}_{h}": as_pyro(_unchecked(plan.prior.hyperpriors[h]))
            for plan in model.plans
            if plan.pooling == "partial"
            for h in plan.family.hyperparameters
        }
        self.fixed_priors = {
            plan.name: model.truncated(plan, _unchecked(plan.prior.hyperpriors["mu"]))
            for plan in model.plans
            if plan.pooling != "partial"
        }
        lapse = model.lapse
        self.share_prior = (
            None
            if lapse is None or lapse.prior is None
            else as_pyro(_unchecked(lapse.prior))
        )

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        values = {k: self.transforms[k].inv(v) for k, v in params.items()}
        log_joint = self.log_joint(values)
        for name, transform in self.transforms.items():
            log_joint = (
                log_joint
                - transform.log_abs_det_jacobian(values[name], params[name]).sum()
            )
        return -log_joint

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        """log p(values, data): hyperpriors, group values, then the rows."""
        total = sum(
            prior.log_prob(values[name]).sum()
            for name, prior in self.hyperpriors.items()
        )
        columns = []
        for plan in self.model.plans:
            value = values[plan.name]
            if plan.pooling == "partial":
                hyper = {
                    h: values[f"{plan.name}_{h}"] for h in plan.family.hyperparameters
                }
                prior = self.model.truncated(plan, plan.family.build(**hyper))
            else:
                prior = self.fixed_priors[plan.name]
            total = total + prior.log_prob(value).sum()
            if not plan.grouped:
                value = value.expand(self.model.num_groups)
            columns.append(value)
        theta = torch.stack(columns, dim=-1)
        rows = self.likelihood.rows(theta, self.group_index).log_prob(self.x)
        lapse = self.model.lapse
        if lapse is not None:
            if lapse.prior is None:
                share = torch.tensor(lapse.fixed, dtype=rows.dtype)
            else:
                share = values[LAPSE_SITE]
                total = total + self.share_prior.log_prob(share).sum()
            rows = mix(rows, lapse.distribution.log_density, share)
        return total + rows.sum()


MIN_COMPILED_ITERATIONS = 4000
MIN_COMPILED_ROWS = 500
"""Compile by default only when both are reached: compiling takes 5 to 45 s (the
first time; torch caches it on disk), and saves about 1.5 ms per leapfrog step on
the DDM's 1,000 trials, so it pays from a few thousand iterations on. On small data
the potential is cheap beside NUTS's own bookkeeping (0.6 ms per step), so there
is little to save (the 150 cookies: about 0.5 ms per step)."""


def worth_compiling(
    compile: bool | None, chains: int, iterations: int, rows: int
) -> bool:
    """`compile` as the user gave it; None decides by the amount of sampling and
    data, and the environment variable SBI_PLUGINS_COMPILE=0 or 1 overrides that
    default."""
    if compile is not None:
        return compile
    setting = os.environ.get("SBI_PLUGINS_COMPILE", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return chains * iterations >= MIN_COMPILED_ITERATIONS and rows >= MIN_COMPILED_ROWS


def compiled_potential(
    model: HierarchicalModel,
    model_kwargs: Mapping[str, Any],
    start: Mapping[str, Tensor],
) -> Callable[[Mapping[str, Tensor]], Tensor] | None:
    """The model's potential compiled with `torch.compile` (forward and gradient
    fused into a few C++ loops), checked at `start` (constrained values) against
    Pyro's own potential of the model: the written-out model cannot drift from the
    Pyro model unnoticed. Compiled here, before chains are forked, so every chain
    inherits the compiled code. None, with a warning, where compiling fails (no C++
    compiler, an operation the compiler cannot take) or disagrees: sampling then
    goes through Pyro's own potential, as without compiling."""
    state = pyro.util.get_rng_state()
    try:
        pyro.set_rng_seed(0)
        init, pyro_potential, transforms, _ = initialize_model(
            model,
            model_kwargs=dict(model_kwargs),
            max_plate_nesting=1,
            init_strategy=init_to_value(values=dict(start)),
        )
    finally:
        pyro.util.set_rng_state(state)
    potential = HierarchicalPotential(
        model,
        transforms,
        model_kwargs["x"],
        model_kwargs["group_index"],
        model_kwargs["likelihood"],
    )
    names = sorted(init)

    def flat(*values: Tensor) -> Tensor:
        return potential(dict(zip(names, values, strict=True)))

    # every fit compiles its own closure of the same code: drop the previous fits'
    # compiled code (the disk cache keeps recompiling them fast), which would
    # otherwise pile up to torch's recompile limit and then run uncompiled
    torch._dynamo.reset()
    compiled = torch.compile(flat, fullgraph=True, dynamic=False)

    def potential_fn(params: Mapping[str, Tensor]) -> Tensor:
        values = [params[k] for k in names]
        # distributions built inside (the population's) skip validation too, so
        # the compiled graph is the same whatever the global setting is
        with pyro.validation_enabled(False):
            if not all(v.requires_grad for v in values):
                return potential(params)  # Pyro's rare calls without a gradient
            return compiled(*values)

    point = {k: v.detach() for k, v in init.items()}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as the chains will run it
        with torch._inductor.config.patch(compile_threads=1):
            grads, value = potential_grad(potential_fn, point)
        expected_grads, expected = potential_grad(pyro_potential, point)
    except Exception as exc:  # no compiler, or an operation it cannot take
        warnings.warn(
            f"could not compile the model's potential ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); sampling without "
            "compiling (slower). Pass compile=False (--no-compile) to skip the "
            "attempt, or install a C++ compiler (g++)",
            stacklevel=3,
        )
        return None
    finally:
        torch.set_num_threads(threads)
    scale = 1e-5 * (1 + float(expected.abs()))
    largest = max(float(g.abs().max()) for g in expected_grads.values())
    close = abs(float(value - expected)) <= scale and all(
        float((grads[k] - expected_grads[k]).abs().max()) <= 1e-4 * (1 + largest)
        for k in names
    )
    if not close:
        warnings.warn(
            "the compiled potential disagrees with Pyro's potential of the model; "
            "sampling without compiling. Pass compile=False (--no-compile) to skip "
            "the attempt",
            stacklevel=3,
        )
        return None
    return potential_fn
