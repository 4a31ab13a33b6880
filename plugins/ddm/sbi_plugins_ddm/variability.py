"""DDM with trial-to-trial variability of drift, start and onset (ssm-simulators'
``full_ddm``), its density by Gauss-Legendre quadrature in torch.

The drift's variability ``sv`` is integrated out in closed form
(:func:`~sbi_plugins_ddm.wfpt.ddm_log_likelihood`); the start's and the onset's,
both uniform, numerically. ssm-simulators' ``full_ddm`` draws, per trial, the
start ``-a + 2 a z + U(-sz, sz)`` (``sz`` in the boundary's units, so the relative
start is uniform over ``z -+ sz / (2 a)``) and the onset ``t + U(-st, st)``. So

    p(rt, r) = E_z'[ (1 / 2 st) int_{rt - t - st}^{rt - t + st} f_sv(s, r | z') ds ]

with ``f_sv`` the decision-time density (zero for ``s <= 0``). The onset window
makes ``p`` a smoothed step at the lower end of ``rt``: it rises from 0 at
``t - st`` like the decision time's distribution function and only then follows
the shifted density.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sbi_plugins_ddm.wfpt import ddm_log_likelihood

__all__ = ["full_ddm_log_likelihood"]

Z_NODES = 4
T_NODES = 5
"""Gauss-Legendre nodes over the start's range, and per panel of the onset's window
(accuracy in docs/ssm.md)."""

T_PANELS = (0.0, 1 / 64, 1 / 16, 1 / 4, 1.0)
"""The onset's window in panels narrowing towards its early end, as fractions of
it: where the window reaches back to decision time 0, the density rises from 0
within a small part of it (fast decisions: small ``a``, starts near a boundary)."""

_RULES: dict[tuple[int, tuple[float, ...]], tuple[np.ndarray, np.ndarray]] = {}


def _gauss_legendre(
    n: int, like: torch.Tensor, panels: tuple[float, ...] = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes on [0, 1] and log weights (summing to log 1) of n-point
    Gauss-Legendre on each of the panels between the fractions ``panels``."""
    key = (n, panels)
    if key not in _RULES:
        unit, weight = np.polynomial.legendre.leggauss(n)
        edges = np.asarray(panels)
        width = np.diff(edges)[:, None]
        nodes = edges[:-1, None] + width * 0.5 * (unit + 1.0)
        _RULES[key] = (nodes.ravel(), np.log(width * 0.5 * weight).ravel())
    nodes, log_weights = _RULES[key]
    return (
        torch.as_tensor(nodes, dtype=like.dtype, device=like.device),
        torch.as_tensor(log_weights, dtype=like.dtype, device=like.device),
    )


def _log_share(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """log(part / whole), 0 where ``whole`` is 0 (a variability of 0: no average)
    and -inf where ``part`` is 0, with finite gradients everywhere."""
    some = whole > 0
    positive = part > 0
    ratio = torch.where(
        some & positive, part / torch.where(some, whole, torch.ones_like(whole)), 1.0
    )
    log_ratio = torch.log(ratio)
    return torch.where(
        some & ~positive, torch.full_like(log_ratio, -math.inf), log_ratio
    )


def full_ddm_log_likelihood(
    theta: torch.Tensor,
    x: torch.Tensor,
    *,
    z_nodes: int = Z_NODES,
    t_nodes: int = T_NODES,
    t_panels: tuple[float, ...] = T_PANELS,
    error: float = 1e-7,
) -> torch.Tensor:
    """log p(rt, response | v, a, z, t, sz, sv, st) of ssm-simulators' ``full_ddm``.

    Args:
        theta: ``(..., 7)`` columns ``v, a, z, t, sz, sv, st`` in ssm-simulators'
            order: the ``ddm`` parameters, then the start's half-range ``sz`` (in
            the boundary's units), the drift's sd ``sv`` and the onset's half-range
            ``st`` (seconds). Zero variabilities are allowed (no average).
        x: ``(..., 2)`` columns ``rt`` and response (+1 upper, -1 or 0 lower).
        z_nodes: Gauss-Legendre nodes over the start's range.
        t_nodes, t_panels: Gauss-Legendre nodes on each panel of the onset's
            window (the decision times ``rt - t -+ st``, cut at 0), the panels'
            edges as fractions of the window from its early end.
        error: the series' error bound, as in ``ddm_log_likelihood``.

    Starts beyond a boundary (``sz / (2 a) > z`` or ``> 1 - z``, only for ``a``
    near its lower bound) end at once on that side, as in the simulator: their
    share is spread uniformly over the onset window ``t -+ st``.

    Returns:
        Log-density of shape ``broadcast(theta.shape[:-1], x.shape[:-1])``;
        ``-inf`` where ``rt <= t - st``.
    """
    dtype = torch.promote_types(theta.dtype, x.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    if theta.shape[-1] != 7:
        raise ValueError(
            f"theta needs columns v, a, z, t, sz, sv, st, got {theta.shape[-1]}"
        )
    columns = torch.broadcast_tensors(
        *theta.to(dtype).unbind(-1), *x.to(dtype).unbind(-1)
    )
    v, a, z, t, sz, sv, st, rt, response = columns

    # the start: relative, uniform over z -+ half, the part beyond (0, 1) cut off
    half = sz / (2.0 * a)
    z_lo = torch.clamp(z - half, min=0.0)
    z_hi = torch.clamp(z + half, max=1.0)
    z_unit, z_log_weight = _gauss_legendre(z_nodes, rt)
    starts = z_lo.unsqueeze(-1) + (z_hi - z_lo).unsqueeze(-1) * z_unit

    # the onset: decision times in rt - t -+ st, those below 0 impossible
    late = rt - t + st
    valid = late > 0
    late = torch.where(valid, late, torch.ones_like(late))
    early = torch.clamp(rt - t - st, min=0.0)
    early = torch.where(valid, early, torch.zeros_like(early))
    t_unit, t_log_weight = _gauss_legendre(t_nodes, rt, t_panels)
    decision = early.unsqueeze(-1) + (late - early).unsqueeze(-1) * t_unit

    grid = (*starts.shape, len(t_unit))
    node_theta = torch.stack(
        [
            v[..., None, None].expand(grid),
            a[..., None, None].expand(grid),
            starts.unsqueeze(-1).expand(grid),
            torch.zeros(grid, dtype=dtype, device=rt.device),
            sv[..., None, None].expand(grid),
        ],
        -1,
    )
    node_x = torch.stack(
        [decision.unsqueeze(-2).expand(grid), response[..., None, None].expand(grid)],
        -1,
    )
    log_f = ddm_log_likelihood(node_theta, node_x, error=error)
    log_mean = torch.logsumexp(
        log_f + z_log_weight.unsqueeze(-1) + t_log_weight, dim=(-2, -1)
    )
    log_p = (
        log_mean
        + _log_share(z_hi - z_lo, 2.0 * half)
        + _log_share(late - early, 2.0 * st)
    )

    # starts beyond the boundary on the response's side: decision time 0
    beyond = torch.where(
        response > 0,
        torch.clamp(z + half - 1.0, min=0.0),
        torch.clamp(half - z, min=0.0),
    )
    at_once = (beyond > 0) & ((rt - t).abs() < st)
    log_at_once = _log_share(beyond, 2.0 * half) - torch.log(
        torch.where(at_once, 2.0 * st, torch.ones_like(st))
    )
    log_p = torch.where(at_once, torch.logaddexp(log_p, log_at_once), log_p)
    return torch.where(valid, log_p, torch.full_like(log_p, -math.inf))
