"""Which mass matrix NUTS adapts: a dense one where the warm-up can estimate it
and the model's populations are centered."""

from __future__ import annotations

from pyro.infer.mcmc.adaptation import WarmupAdapter

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
