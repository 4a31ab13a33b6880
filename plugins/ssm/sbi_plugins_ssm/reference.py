"""Reference densities for the catalogue's models that have one, from the ddm plugin:
the DDM density with drift variability in closed form (`ddm_sdv`) and with start
and onset variability integrated by quadrature (`full_ddm`), each at the boundaries
that ssm-simulators' time steps effectively use. They make
`fit(..., likelihood="exact")` and `check`'s "error vs exact" possible for these."""

from __future__ import annotations

import math

import torch
from sbi_plugins_ddm.simulator import BGK_BETA
from sbi_plugins_ddm.variability import full_ddm_log_likelihood
from sbi_plugins_ddm.wfpt import ddm_log_likelihood

from sbi_plugins.contract import LogLikelihoodFn
from sbi_plugins_ssm.simulator import DELTA_T

OVERSHOOT = BGK_BETA * math.sqrt(DELTA_T)
"""How much further out ssm-simulators' boundaries act (0.018 at 1 ms steps)."""


def as_simulated(theta: torch.Tensor) -> torch.Tensor:
    """The continuous model that ssm-simulators' trials follow: it checks the
    boundaries once per time step, so they act ``beta sqrt(dt)`` further out
    (Broadie, Glasserman & Kou 1997), 6% of ``a`` at its lower bound 0.3. ``a``
    (column 1) grows by that, the relative start ``z`` (column 2) moves so that
    the start stays where it was; the start's range ``sz`` is in the boundary's
    units and stays as it is. The ddm plugin moves its simulator's boundaries in
    instead."""
    a = theta[..., 1] + OVERSHOOT
    z = (2.0 * theta[..., 1] * theta[..., 2] + OVERSHOOT) / (2.0 * a)
    return torch.cat([theta[..., :1], a[..., None], z[..., None], theta[..., 3:]], -1)


def ddm_sdv_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``ddm_sdv`` (columns v, a, z, t, sv): drift variability in closed form."""
    return ddm_log_likelihood(as_simulated(theta), x)


def full_ddm_reference(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``full_ddm`` (columns v, a, z, t, sz, sv, st): start and onset variability
    by Gauss-Legendre quadrature over the closed form."""
    return full_ddm_log_likelihood(as_simulated(theta), x)


REFERENCE_DENSITIES: dict[str, LogLikelihoodFn] = {
    "ddm_sdv": ddm_sdv_log_likelihood,
    "full_ddm": full_ddm_reference,
}
"""By ssm-simulators' model name; each takes theta in the config's column order."""
