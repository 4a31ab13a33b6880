"""Variational inference behind the inference interface: Pyro's SVI with a
multivariate-normal guide over every latent site in the unconstrained space.

Why: on large studies a NUTS fit takes as many gradient evaluations as its
trajectories need (hundreds per draw); an SVI step takes one. SVI fits the same
potential NUTS samples (Pyro's set-up of the model, compiled on large data as for
NUTS and checked against Pyro's): the guide is a distribution over the flat
vector of unconstrained values, and the model it fits is that vector with the
potential as its factor, so a step costs one potential gradient, not a trace of
the model's sites. The guide is
full-rank up to `FULL_RANK_MAX` unconstrained dimensions and low-rank plus
diagonal above (a 150-subject regression has hundreds), starts at the model's
data-based start, and is optimised until the ELBO stops improving: each window
of `WINDOW` steps is compared with the one before, and the fit has converged
when the improvement is within twice its standard error; the guide's parameters
are then averaged over `AVERAGED_STEPS` more steps. The draws come from the
guide, so they under-disperse where the posterior is not normal: check PSIS-LOO's
Pareto k (`az.loo` warns) and compare with NUTS on what matters.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    init_to_value,
)
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from sbi_plugins.inference.base import Draws, Settings
from sbi_plugins.inference.compile import (
    compiled_potential,
    pyro_potential,
    worth_compiling,
)
from sbi_plugins.inference.flat import FlatLayout, vector_potential

if TYPE_CHECKING:
    from sbi_plugins.data import PreparedData
    from sbi_plugins.model.model import HierarchicalModel

FULL_RANK_MAX = 200
"""Up to this many unconstrained dimensions the guide's covariance is full."""
LOW_RANK = 20
"""The rank of the low-rank guide's covariance factor above `FULL_RANK_MAX`."""
WINDOW = 250
"""Steps per convergence window."""
MAX_STEPS = 30_000
"""At most this many optimisation steps; a fit that stops here warns."""
LEARNING_RATE = 0.01
AVERAGED_STEPS = 1000
"""Steps after convergence whose guide parameters are averaged (Polyak-Ruppert):
at a fixed learning rate the parameters jitter around the optimum, by a quarter
of a posterior sd on the cookie data's `lam_mu`; their average sits on it."""


class ConvergenceWarning(UserWarning):
    """The ELBO was still improving when the steps ran out."""


class Variational:
    """Pyro SVI with an `AutoMultivariateNormal` (or low-rank) guide."""

    name = "vi"

    def run(
        self,
        model: HierarchicalModel,
        model_kwargs: Mapping[str, Any],
        data: PreparedData,
        settings: Settings,
    ) -> Draws:
        s = settings
        flat = FlatPosterior(model, dict(model_kwargs), s.compile, len(data.x))
        pyro.clear_param_store()
        pyro.set_rng_seed(s.seed)
        guide = make_guide(flat)
        started = time.perf_counter()
        losses, converged = optimise(svi_at(flat, guide, LEARNING_RATE), s.progress)
        losses += averaged_steps(svi_at(flat, guide, LEARNING_RATE))
        seconds = time.perf_counter() - started
        if not converged:
            warnings.warn(
                f"the ELBO was still improving after {MAX_STEPS} steps: the "
                "variational fit may not have converged; check it against "
                "method='nuts'",
                ConvergenceWarning,
                stacklevel=4,
            )
        posterior, log_q = guide_draws(guide, flat, s.chains, s.draws)
        shape = (s.chains, s.draws)
        elbo = -np.asarray(losses)
        return Draws(
            posterior,
            {"log_q": log_q.reshape(shape)},
            {
                "inference_method": self.name,
                "vi_guide": type(guide).__name__,
                "vi_dimensions": int(guide.latent_dim),
                "compiled": int(flat.compiled),
                "vi_steps": len(losses),
                "vi_converged": int(converged),
                "vi_final_elbo": float(elbo[-WINDOW:].mean()),
                "vi_seconds": round(seconds, 1),
                "vi_elbo_trace": [
                    round(float(v), 2) for v in elbo[:: max(1, len(elbo) // 500)]
                ],
            },
        )


class FlatPosterior:
    """The model's posterior as one flat vector of unconstrained values: a Pyro
    model of that vector (`__call__`) whose only factor is the model's potential,
    compiled where NUTS would compile it, and the map back to each site's
    constrained values."""

    def __init__(
        self,
        model: HierarchicalModel,
        kwargs: dict[str, Any],
        compile: bool | None,
        rows: int,
    ) -> None:
        start = model.start()
        init, reference, self.transforms = pyro_potential(model, kwargs, start)
        potential = None
        if worth_compiling(compile, 1, MAX_STEPS, rows):
            potential = compiled_potential(model, kwargs, [start])
        self.compiled = potential is not None
        self.layout = FlatLayout.of(init)
        self.potential = vector_potential(potential or reference, self.layout)
        self.start = self.layout.flatten(init).detach()

    def constrained(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unconstrained vectors `(..., dims)` -> each site's constrained values."""
        return {
            k: self.transforms[k].inv(v) for k, v in self.layout.unflatten(z).items()
        }

    def __call__(self) -> None:
        support = dist.constraints.real
        z = pyro.sample("z", dist.ImproperUniform(support, (), (len(self.start),)))
        with poutine.block():  # Pyro's potential traces the model: not our sites
            potential = self.potential(z)
        pyro.factor("log_joint", -potential)


def svi_at(flat: FlatPosterior, guide: Any, learning_rate: float) -> SVI:
    """SVI with Adam (gradients clipped) at `learning_rate`."""
    return SVI(flat, guide, ClippedAdam({"lr": learning_rate}), loss=Trace_ELBO())


def make_guide(flat: FlatPosterior) -> Any:
    """A full-rank guide, or a low-rank one above `FULL_RANK_MAX` dimensions,
    centred at the model's data-based start with a small initial scale."""
    init = init_to_value(values={"z": flat.start})
    if len(flat.start) <= FULL_RANK_MAX:
        guide = AutoMultivariateNormal(flat, init_loc_fn=init, init_scale=0.01)
    else:
        guide = AutoLowRankMultivariateNormal(
            flat, init_loc_fn=init, init_scale=0.01, rank=LOW_RANK
        )
    guide()  # builds its parameters
    return guide


def optimise(svi: SVI, progress: bool) -> tuple[list[float], bool]:
    """SVI steps until a window's mean loss is no better than the window before
    by more than twice the difference's standard error, or `MAX_STEPS`."""
    losses: list[float] = []
    bar = tqdm(total=MAX_STEPS, desc="vi", unit="step", disable=not progress)
    try:
        while len(losses) < MAX_STEPS:
            losses.append(float(svi.step()))
            bar.update()
            if len(losses) % 50 == 0:
                bar.set_postfix(elbo=f"{-np.mean(losses[-50:]):.1f}")
            at_window = len(losses) >= 4 * WINDOW and len(losses) % WINDOW == 0
            if at_window and stopped_improving(losses):
                return losses, True
        return losses, False
    finally:
        bar.close()


def averaged_steps(svi: SVI) -> list[float]:
    """`AVERAGED_STEPS` more steps; the guide keeps its parameters' average (of
    their unconstrained values, updated in place where the optimiser keeps them)."""
    parameters = dict(svi.guide.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in parameters.items()}
    losses = []
    for _ in range(AVERAGED_STEPS):
        losses.append(float(svi.step()))
        with torch.no_grad():
            for name, value in parameters.items():
                total[name] += value
    with torch.no_grad():
        for name, value in parameters.items():
            value.copy_(total[name] / AVERAGED_STEPS)
    return losses


def stopped_improving(losses: list[float]) -> bool:
    """Whether the last window's mean loss is within twice the standard error of
    the difference from the window before (no improvement the noise does not
    explain)."""
    last = np.asarray(losses[-WINDOW:])
    before = np.asarray(losses[-2 * WINDOW : -WINDOW])
    improvement = before.mean() - last.mean()
    error = math.sqrt((last.var() + before.var()) / WINDOW)
    return improvement < 2 * error


def guide_draws(
    guide: Any, flat: FlatPosterior, chains: int, draws: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`chains x draws` independent draws of every latent site from the guide,
    constrained, shaped `(chain, draw, ...)`, and each draw's log density under
    the guide (in the unconstrained space)."""
    with torch.no_grad():
        posterior = guide.get_posterior()
        latent = posterior.sample((chains * draws,))
        log_q = posterior.log_prob(latent).numpy()
        values = flat.constrained(latent.double())
    return {
        name: v.numpy().reshape(chains, draws, *v.shape[1:])
        for name, v in values.items()
    }, log_q
