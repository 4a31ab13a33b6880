"""Which mass matrix NUTS adapts: a dense one where the warm-up can estimate it
and the model's populations are centered."""

from __future__ import annotations

import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.ops.welford import WelfordCovariance

DRAWS_PER_DIMENSION = 5
"""Draws per dimension the warm-up's last window needs for "auto" to adapt a dense
mass matrix: that window's covariance is the one sampled with. A 5 x 200 DDM fit
with 150 tuning steps (a last window of 25 draws, 16 dimensions) took 18.6 leapfrog
steps per draw dense against 7.7 diagonal; with 1,000 (500 draws, 26-27
dimensions) every centered model measured gained (docs/ssm.md)."""


def last_window(tune: int) -> int:
    """Draws in the last (longest) mass-matrix window of Pyro's warm-up schedule
    (Stan's: buffers of 75 and 50 draws, windows doubling from 25): 500 of 1,000."""
    adapter = WarmupAdapter(adapt_mass_matrix=True)
    adapter._warmup_steps = tune
    windows = adapter._build_adaptation_schedule()[1:-1]
    return windows[-1].end - windows[-1].start + 1 if windows else 0


def dense_pays(request: str, *, dims: int, tune: int, preset_start: bool) -> bool:
    """Whether NUTS adapts a dense mass matrix: as asked, or for "auto" where every
    population is centered (no Laplace start, whose preset diagonal scales are what
    the non-centered and formula models need) and the warm-up's last window has
    `DRAWS_PER_DIMENSION` draws per dimension (at 1,000 tuning steps, up to 100)."""
    if request != "auto":
        return request == "dense"
    return not preset_start and last_window(tune) >= DRAWS_PER_DIMENSION * dims


class WindowCovariance(WelfordCovariance):
    """A dense mass-matrix window's covariance (with Stan's regularisation), or
    only its variances where the window has fewer than `DRAWS_PER_DIMENSION` draws
    per dimension, the rule "auto" applies to the last window: Stan's schedule
    starts with windows of 25 and 50 draws, too few to estimate 28 x 28
    covariances, and the near-singular matrix they give sets the step size by
    directions that are not there (`weibull`: 148 gradients per transition after
    the first window against 22 before it)."""

    def __init__(self) -> None:
        super().__init__(diagonal=False)

    def get_covariance(self, regularize: bool = True) -> torch.Tensor:
        covariance = super().get_covariance(regularize)
        if self.n_samples < DRAWS_PER_DIMENSION * covariance.shape[0]:
            return torch.diag(torch.diagonal(covariance))
        return covariance


def estimate_short_windows_diagonally(adapter: object) -> None:
    """Give a configured Pyro mass-matrix adapter's dense blocks `WindowCovariance`."""
    schemes = getattr(adapter, "_adapt_scheme", {})
    for block, scheme in schemes.items():
        if isinstance(scheme, WelfordCovariance) and not scheme.diagonal:
            schemes[block] = WindowCovariance()
