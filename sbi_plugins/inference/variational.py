"""Variational inference behind the inference interface: Pyro's SVI with a
multivariate-normal guide over every latent site in the unconstrained space.

Why: on large studies a NUTS fit takes as many gradient evaluations as its
trajectories need (hundreds per draw); an SVI step takes one. The guide is
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
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    init_to_value,
)
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from sbi_plugins.inference.base import Draws, Settings

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
        kwargs = dict(model_kwargs)
        pyro.clear_param_store()
        pyro.set_rng_seed(s.seed)
        guide = make_guide(model, kwargs)
        started = time.perf_counter()
        losses, converged = optimise(
            svi_at(model, guide, LEARNING_RATE), kwargs, s.progress
        )
        losses += averaged_steps(svi_at(model, guide, LEARNING_RATE), kwargs)
        seconds = time.perf_counter() - started
        if not converged:
            warnings.warn(
                f"the ELBO was still improving after {MAX_STEPS} steps: the "
                "variational fit may not have converged; check it against "
                "method='nuts'",
                ConvergenceWarning,
                stacklevel=4,
            )
        posterior, log_q = guide_draws(guide, kwargs, s.chains, s.draws)
        shape = (s.chains, s.draws)
        elbo = -np.asarray(losses)
        return Draws(
            posterior,
            {"log_q": log_q.reshape(shape)},
            {
                "inference_method": self.name,
                "vi_guide": type(guide).__name__,
                "vi_dimensions": int(guide.latent_dim),
                "vi_steps": len(losses),
                "vi_converged": int(converged),
                "vi_final_elbo": float(elbo[-WINDOW:].mean()),
                "vi_seconds": round(seconds, 1),
                "vi_elbo_trace": [
                    round(float(v), 2) for v in elbo[:: max(1, len(elbo) // 500)]
                ],
            },
        )


def svi_at(model: HierarchicalModel, guide: Any, learning_rate: float) -> SVI:
    """SVI with Adam (gradients clipped) at `learning_rate`."""
    return SVI(model, guide, ClippedAdam({"lr": learning_rate}), loss=Trace_ELBO())


def make_guide(model: HierarchicalModel, kwargs: dict[str, Any]) -> Any:
    """A full-rank guide, or a low-rank one above `FULL_RANK_MAX` dimensions,
    centred at the model's data-based start with a small initial scale."""
    init = init_to_value(values=model.start())
    guide = AutoMultivariateNormal(model, init_loc_fn=init, init_scale=0.01)
    guide(**kwargs)  # builds the guide: its dimension is known after one call
    if guide.latent_dim > FULL_RANK_MAX:
        pyro.clear_param_store()
        guide = AutoLowRankMultivariateNormal(
            model, init_loc_fn=init, init_scale=0.01, rank=LOW_RANK
        )
        guide(**kwargs)
    return guide


def optimise(
    svi: SVI, kwargs: dict[str, Any], progress: bool
) -> tuple[list[float], bool]:
    """SVI steps until a window's mean loss is no better than the window before
    by more than twice the difference's standard error, or `MAX_STEPS`."""
    losses: list[float] = []
    bar = tqdm(total=MAX_STEPS, desc="vi", unit="step", disable=not progress)
    try:
        while len(losses) < MAX_STEPS:
            losses.append(float(svi.step(**kwargs)))
            bar.update()
            if len(losses) % 50 == 0:
                bar.set_postfix(elbo=f"{-np.mean(losses[-50:]):.1f}")
            at_window = len(losses) >= 4 * WINDOW and len(losses) % WINDOW == 0
            if at_window and stopped_improving(losses):
                return losses, True
        return losses, False
    finally:
        bar.close()


def averaged_steps(svi: SVI, kwargs: dict[str, Any]) -> list[float]:
    """`AVERAGED_STEPS` more steps; the guide keeps its parameters' average (of
    their unconstrained values, updated in place where the optimiser keeps them)."""
    parameters = dict(svi.guide.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in parameters.items()}
    losses = []
    for _ in range(AVERAGED_STEPS):
        losses.append(float(svi.step(**kwargs)))
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
    guide: Any, kwargs: dict[str, Any], chains: int, draws: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`chains x draws` independent draws of every latent site from the guide,
    constrained, shaped `(chain, draw, ...)`, and each draw's log density under
    the guide (in the unconstrained space)."""
    with torch.no_grad():
        posterior = guide.get_posterior(**kwargs)
        latent = posterior.sample((chains * draws,))
        log_q = posterior.log_prob(latent).numpy()
        values: dict[str, list[np.ndarray]] = {}
        for row in latent:
            for name, value in _constrained(guide, row).items():
                values.setdefault(name, []).append(value.numpy())
    return {
        name: np.stack(v).reshape(chains, draws, *v[0].shape)
        for name, v in values.items()
    }, log_q


def _constrained(guide: Any, latent: torch.Tensor) -> dict[str, torch.Tensor]:
    """One unconstrained latent vector -> each site's constrained value."""
    out = {}
    for site, unconstrained in guide._unpack_latent(latent):
        transform = torch.distributions.biject_to(site["fn"].support)
        out[site["name"]] = transform(unconstrained)
    return out
