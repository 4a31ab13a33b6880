"""Population distributions truncated to a training box, differentiable for NUTS.

A group-level parameter must stay inside the box its estimator was trained on, and
its hyperparameters must still have a correct posterior. So the truncation is
normalized exactly: log p(x) = log f(x) - log(F(high) - F(low)), with gradients with
respect to the hyperparameters. torch lacks the derivative of the regularized
incomplete gamma function in its shape argument; `gammainc` below supplies it.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import constraints

_TINY = 1e-300
REJECTION_ROUNDS = 20
"""Rounds of rejection sampling before the rest is drawn from the grid."""
GRID = 4097
"""Points of the grid on which a truncated density's distribution function is
inverted when rejection leaves draws undone."""


def gammainc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Regularized lower incomplete gamma P(a, x), differentiable in both arguments.

    The value and its x-derivative are torch's; the a-derivative is a central
    difference in float64 (relative step 1e-5, error about 1e-9), attached with the
    detach trick so the graph stays traceable by `torch.jit`. Two torch calls in all:
    it sits inside every NUTS step of a gamma population.
    """
    a64, x64 = torch.broadcast_tensors(a.double(), x.double())
    a_const = a64.detach()
    value = torch.special.gammainc(a_const, x64)
    h = 1e-5 * a_const.abs().clamp(min=1e-3)
    ends = torch.special.gammainc(
        torch.stack([a_const + h, a_const - h]), x64.detach().expand(2, *x64.shape)
    )
    slope = (ends[0] - ends[1]) / (2 * h)
    return (value + (a64 - a_const) * slope).to(torch.promote_types(a.dtype, x.dtype))


def _gamma_log_mass(
    base: torch.distributions.Gamma, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """log(F(high) - F(low)) for a gamma, both ends in one call."""
    a = base.concentration[..., None]
    x = base.rate[..., None] * torch.stack([low, high]).to(base.rate.dtype)
    cdf = gammainc(a, x)
    return (cdf[..., 1] - cdf[..., 0]).clamp(min=_TINY).log()


def _normal_log_mass(
    base: torch.distributions.Normal, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """log(Phi(beta) - Phi(alpha)) in log space, mirrored into the lower tail where
    `log_ndtr` stays accurate, so far-off populations give finite values."""
    alpha = (low - base.loc) / base.scale
    beta = (high - base.loc) / base.scale
    flip = (alpha + beta) > 0
    lo = torch.where(flip, -beta, alpha)
    hi = torch.where(flip, -alpha, beta)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    diff = (log_lo - log_hi).clamp(max=-1e-15)
    return log_hi + torch.log(-torch.expm1(diff)).clamp(min=math.log(_TINY))


def log_interval_mass(
    base: torch.distributions.Distribution, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """log P(low <= X <= high), differentiable in the distribution's parameters."""
    if isinstance(base, torch.distributions.Gamma):
        return _gamma_log_mass(base, low, high)
    if isinstance(base, torch.distributions.Normal):
        return _normal_log_mass(base, low, high)
    mass = base.cdf(high) - base.cdf(low)
    return mass.clamp(min=_TINY).log()


def _ndtr(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) accurate in the lower tail (torch's `ndtr` is 0 below about -8)."""
    return 0.5 * torch.special.erfc(-x * math.sqrt(0.5))


def normal_population_value(
    offset: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
) -> torch.Tensor:
    """The value of Normal(mu, sigma) truncated to [low, high] at quantile
    Phi(`offset`): the non-centered population. With `offset` ~ Normal(0, 1) the
    value has exactly the truncated density, and in a wide box it is
    mu + sigma * offset, Bambi's non-centered group effect. Computed on the side of
    the mean the box lies (mirrored, as `_normal_log_mass`), where `ndtr` keeps its
    digits; clamped into the box against the last bit of rounding."""
    alpha = (low - mu) / sigma
    beta = (high - mu) / sigma
    flip = (alpha + beta) > 0
    a = torch.where(flip, -beta, alpha)
    b = torch.where(flip, -alpha, beta)
    q = torch.where(flip, -offset, offset)
    p = _ndtr(-q) * _ndtr(a) + _ndtr(q) * _ndtr(b)
    z = torch.special.ndtri(p.clamp(min=_TINY, max=1.0))
    value = mu + sigma * torch.where(flip, -z, z)
    return torch.minimum(torch.maximum(value, low), high)


def normal_population_offset(
    value: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
) -> torch.Tensor:
    """The inverse of `normal_population_value`: the standard-normal offset at
    which the truncated population takes `value` (for starting values)."""
    alpha = (low - mu) / sigma
    beta = (high - mu) / sigma
    flip = (alpha + beta) > 0
    a = torch.where(flip, -beta, alpha)
    b = torch.where(flip, -alpha, beta)
    x = torch.where(flip, -1.0, 1.0) * (value - mu) / sigma
    cdf_a, cdf_b = _ndtr(a), _ndtr(b)
    q = (_ndtr(x) - cdf_a) / (cdf_b - cdf_a).clamp(min=_TINY)
    offset = torch.special.ndtri(q.clamp(1e-12, 1 - 1e-12))
    return torch.where(flip, -offset, offset)


class WeightedOffset(dist.TorchDistribution):
    """Standard-normal offsets, one per group, each with a factor `log_weight`
    that depends on the hyperparameters only.

    A group whose shift parameter lies below a ceiling (`SampledBelow`) has its
    population truncated to [low, ceiling] instead of [low, high]; the weight,
    log of the mass below the ceiling, keeps the hyperparameters' posterior that of
    the box-truncated population (the same density, sampled on less of it)."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, log_weight: torch.Tensor):
        self.log_weight = log_weight
        super().__init__(log_weight.shape, torch.Size(), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -0.5 * value**2 - 0.5 * math.log(2 * math.pi) + self.log_weight

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.log_weight.dtype)

    def expand(self, batch_shape, _instance=None):
        return WeightedOffset(self.log_weight.expand(batch_shape))


def _param_dtype(base: torch.distributions.Distribution) -> torch.dtype:
    for name in base.arg_constraints:
        value = getattr(base, name, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


class TruncatedToBox(dist.TorchDistribution):
    """`base` restricted to [low, high] and renormalized.

    Its support is the interval, so NUTS samples it through a sigmoid transform and
    can never propose a value outside the training box.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        base: torch.distributions.Distribution,
        low: float | torch.Tensor,
        high: float | torch.Tensor,
        validate_args=None,
    ):
        self.base = base
        dtype = _param_dtype(base)
        self.low = torch.as_tensor(low, dtype=dtype)
        self.high = torch.as_tensor(high, dtype=dtype)
        self._log_mass = log_interval_mass(base, self.low, self.high)
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        inside = (value >= self.low) & (value <= self.high)
        safe = torch.where(inside, value, (self.low + self.high) / 2)
        lp = self.base.log_prob(safe) - self._log_mass
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Rejection from the base (prior draws only, never inside NUTS); what a few
        rounds leave (a population with little mass in the box) is drawn by
        inverting the truncated density's distribution function on a fine grid."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            out = self.base.expand(self.batch_shape).sample(sample_shape)
            for _ in range(REJECTION_ROUNDS):
                bad = (out < self.low) | (out > self.high)
                if not bad.any():
                    return out
                out = torch.where(bad, self.base.sample(sample_shape), out)
            bad = (out < self.low) | (out > self.high)
            if not bad.any():
                return out
            return torch.where(bad, self._grid_sample(shape).to(out.dtype), out)

    def _grid_sample(self, shape: torch.Size) -> torch.Tensor:
        """Draws of `shape` from the base's density on [low, high], by the inverse of
        its distribution function on a grid of `GRID` points per batch element
        (trapezoids of the density, exact to the grid's resolution in any tail)."""
        batch = self.batch_shape
        steps = torch.linspace(0, 1, GRID, dtype=torch.float64)
        steps = steps.reshape(GRID, *([1] * len(batch)))
        low, high = self.low.double(), self.high.double()
        grid = low + (high - low) * steps  # (GRID, *batch)
        lp = self.base.log_prob(grid.to(self.low.dtype)).double()
        density = torch.exp(lp - lp.max(0).values).nan_to_num(0.0)
        area = 0.5 * (density[1:] + density[:-1]) * (grid[1:] - grid[:-1])
        cdf = torch.cat([torch.zeros_like(area[:1]), area.cumsum(0)])
        cdf = (cdf / cdf[-1].clamp_min(1e-300)).reshape(GRID, -1).T  # (B, GRID)
        points = grid.expand(GRID, *batch).reshape(GRID, -1).T.contiguous()
        count = int(torch.Size(shape).numel() // max(1, batch.numel()))
        u = torch.rand(cdf.shape[0], count, dtype=torch.float64)
        right = torch.searchsorted(cdf.contiguous(), u).clamp(1, GRID - 1)
        c0, c1 = cdf.gather(1, right - 1), cdf.gather(1, right)
        x0, x1 = points.gather(1, right - 1), points.gather(1, right)
        weight = ((u - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
        draws = x0 + weight * (x1 - x0)  # (B, count)
        return draws.T.reshape(shape)

    def expand(self, batch_shape, _instance=None):
        return TruncatedToBox(self.base.expand(batch_shape), self.low, self.high)


class SampledBelow(dist.TorchDistribution):
    """`base`'s density, sampled only on [base's lower bound, `ceiling`].

    For a shift parameter without lapses: a group's likelihood is exactly zero once
    its `t` reaches the group's fastest RT, so the posterior holds no mass above
    that ceiling. Narrowing the support (and so the sigmoid transform NUTS samples
    through) changes no density and no posterior; it only moves that wall of zero
    likelihood to the end of the unconstrained line, where NUTS never meets it
    (no rejected trajectories, no divergences, no step size shrunk to pass it).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, base: TruncatedToBox, ceiling: torch.Tensor):
        self.base = base
        self.ceiling = torch.minimum(ceiling.to(base.high.dtype), base.high)
        shape = torch.broadcast_shapes(base.batch_shape, self.ceiling.shape)
        super().__init__(shape, base.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.base.low, self.ceiling)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lp = self.base.log_prob(value)
        return torch.where(value <= self.ceiling, lp, torch.full_like(lp, -math.inf))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """The base's draws (prior draws only, never inside NUTS)."""
        return self.base.sample(self._extended_shape(sample_shape))

    def expand(self, batch_shape, _instance=None):
        return SampledBelow(self.base, self.ceiling.expand(batch_shape))


class _PyroWrapped(dist.TorchDistribution):
    """A plain torch distribution, made callable for `pyro.sample`."""

    arg_constraints: dict = {}

    def __init__(self, base: torch.distributions.Distribution):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.rsample(sample_shape)

    def expand(self, batch_shape, _instance=None):
        return _PyroWrapped(self.base.expand(batch_shape))


def as_pyro(distribution: torch.distributions.Distribution) -> dist.TorchDistribution:
    """Plugins write priors with `torch.distributions`; Pyro needs its own kind."""
    if isinstance(distribution, TorchDistributionMixin):
        return distribution
    return _PyroWrapped(distribution)
