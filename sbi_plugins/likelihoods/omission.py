"""Omissions: trials that end without a response because a deadline passed.

A decision model's trial that has not decided by its deadline `D` leaves no response
time, only the fact that it did not respond. Its likelihood is the probability of
that event,

    P(no decision by D | theta) = 1 - sum_c integral_onset^D p(rt, c | theta) drt,

and a decided trial keeps its density p(rt, c | theta) (a deadline does not change
the density of a response that came before it). The integral is taken from the
likelihood's own density (learned or exact), by Gauss-Legendre quadrature over the
log of the response time's excess over its onset, divided by its scale (the DDM's
`log((rt - t) / a**2)`, the network's own variable): the sharp leading edge of the
density is resolved there, and no new network is trained. It is computed once per
(cell, distinct deadline), not once per row, so NUTS pays for a few dozen density
evaluations per cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sbi_plugins.contract import Simulator
from sbi_plugins.data import decision_columns
from sbi_plugins.estimators import reduction

NODES = 64
"""Gauss-Legendre nodes over the log excess; against the DDM's closed-form CDF the
quadrature is exact to about 1e-9 across the training box (tests/test_omissions.py)."""
LOWEST_EXCESS = 1e-4
"""The lower end of the integral, as the excess over the onset divided by its scale:
the DDM's density there is below e^-50 for every starting point in its box."""
SMALLEST = 1e-10
"""Probabilities are kept in [SMALLEST, 1 - SMALLEST] in log space: quadrature
error never gives log(0) or log of a negative number, and gradients stay finite."""


@dataclass(frozen=True)
class Omissions:
    """Which rows are omissions, and the (cell, deadline) pairs they are scored at.

    Rows are scored as `decided` (their density) and `omitted` (their pair's
    omission probability), then put back in the data's order by `order`."""

    decided: Tensor
    omitted: Tensor
    mask: Tensor
    pair_cell: Tensor
    pair_deadline: Tensor
    row_pair: Tensor
    order: Tensor

    @classmethod
    def of(
        cls, omitted: np.ndarray | None, deadline: np.ndarray | None, cells: np.ndarray
    ) -> Omissions | None:
        """From the data's omission mask, per-row deadlines and each row's cell;
        None where no row is omitted."""
        if omitted is None or not omitted.any():
            return None
        omitted = np.asarray(omitted, dtype=bool)
        decided_rows, omitted_rows = np.flatnonzero(~omitted), np.flatnonzero(omitted)
        keys = np.stack(
            [cells[omitted_rows].astype(float), deadline[omitted_rows]], axis=1
        )
        pairs, row_pair = np.unique(keys, axis=0, return_inverse=True)
        order = np.empty(len(omitted), dtype=np.int64)
        order[np.concatenate([decided_rows, omitted_rows])] = np.arange(len(omitted))
        return cls(
            decided=torch.as_tensor(decided_rows),
            omitted=torch.as_tensor(omitted_rows),
            mask=torch.as_tensor(omitted),
            pair_cell=torch.as_tensor(pairs[:, 0].astype(np.int64)),
            pair_deadline=torch.as_tensor(pairs[:, 1], dtype=torch.float64),
            row_pair=torch.as_tensor(row_pair.reshape(-1)),
            order=torch.as_tensor(order),
        )

    def combine(self, decided: Tensor, omitted_pairs: Tensor) -> Tensor:
        """Rows in the data's order from the decided rows' values and the pairs'."""
        omitted = omitted_pairs[..., self.row_pair]
        return torch.cat([decided, omitted], dim=-1)[..., self.order]


def time_frame(
    simulator: Simulator, theta: Tensor, time_column: int
) -> tuple[Tensor, Tensor]:
    """The response time's onset (what it always exceeds: its shift parameter or
    sum, else 0) and the log of its scale (the declared product of parameters,
    else 0), per row of `theta`."""
    observable = simulator.observables[time_column]
    names = simulator.parameter_names
    zero = torch.zeros_like(theta[..., 0])
    floor = reduction.observable_floor(observable, names)
    onset = zero if floor is None else reduction.floor_value(floor, theta)
    log_scale = zero
    for name, power in (observable.scale or {}).items():
        log_scale = log_scale + power * theta[..., names.index(name)].log()
    return onset, log_scale


_RULES: dict[int, tuple[Tensor, Tensor]] = {}


def _gauss_legendre(nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes on [-1, 1] and log-weights, computed once per size."""
    if nodes not in _RULES:
        points, weights = np.polynomial.legendre.leggauss(nodes)
        _RULES[nodes] = (torch.as_tensor(points), torch.as_tensor(np.log(weights)))
    return _RULES[nodes]


def log_decision_probability(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    simulator: Simulator,
    theta: Tensor,
    deadline: Tensor,
    nodes: int = NODES,
) -> Tensor:
    """log P(a decision, any response, before `deadline`) under the density
    `log_prob(theta, x)`, for `theta` `(..., pairs, P)` and `deadline` `(pairs,)`.

    The integrand is taken over s = log((rt - onset) / scale), from
    LOWEST_EXCESS to the deadline: `p(rt, c) * (rt - onset)` at Gauss-Legendre
    nodes, summed over the responses in log space."""
    time_column, choice_column = decision_columns(simulator)
    codes = torch.tensor(simulator.observables[choice_column].codes, dtype=theta.dtype)
    onset, log_scale = time_frame(simulator, theta, time_column)
    excess = deadline.to(theta.dtype) - onset
    possible = excess > 0
    low = log_scale + math.log(LOWEST_EXCESS)
    high = torch.maximum(torch.log(excess.clamp_min(1e-300)), low)
    points, log_weights = (v.to(theta.dtype) for v in _gauss_legendre(nodes))
    half = (high - low) / 2  # zero where the deadline falls before the lower end
    s = low[..., None] + half[..., None] * (1 + points)  # (..., pairs, K)
    rt = onset[..., None] + torch.exp(s)
    shape = (*s.shape[:-1], len(codes), nodes)  # (..., pairs, C, K)
    x = torch.stack(
        [rt[..., None, :].expand(shape), codes[:, None].expand(shape)], dim=-1
    )
    if time_column != 0:
        x = x.flip(-1)
    rows = theta[..., None, None, :].expand(*shape, theta.shape[-1])
    lp = log_prob(rows.reshape(-1, theta.shape[-1]), x.reshape(-1, 2)).reshape(shape)
    lp = torch.nan_to_num(lp, nan=-math.inf)
    terms = lp + s[..., None, :] + log_weights
    total = torch.logsumexp(terms.flatten(-2), dim=-1)
    total = total + torch.log(half.clamp_min(1e-300))
    return torch.where(possible, total, torch.full_like(total, -math.inf))


def clamp_log_probability(log_p: Tensor) -> Tensor:
    """log P kept inside [log SMALLEST, log(1 - SMALLEST)] (-inf and NaN become
    the lower end): finite values and finite gradients everywhere."""
    log_p = torch.where(
        torch.isnan(log_p), torch.full_like(log_p, math.log(SMALLEST)), log_p
    )
    return log_p.clamp(min=math.log(SMALLEST), max=math.log1p(-SMALLEST))


def log_omission_probability(log_decided: Tensor) -> Tensor:
    """log(1 - P(decided)) from log P(decided), with P kept inside
    [SMALLEST, 1 - SMALLEST]."""
    clamped = clamp_log_probability(log_decided)
    # log1mexp, stable on both sides of log(1/2)
    return torch.where(
        clamped > -math.log(2),
        torch.log(-torch.expm1(clamped)),
        torch.log1p(-torch.exp(clamped)),
    )
