"""Exact drift-diffusion (Wiener first-passage time) log-likelihood in pure torch.

Navarro & Fuss (2009), "Fast and accurate calculations for first-passage times in
Wiener diffusion models", J. Math. Psychol. 53, 222-230, written in log space so
that it is usable (and differentiable) inside gradient-based samplers such as NUTS.

Parametrization follows the ``ddm`` model of ``ssm-simulators`` (and HSSM's
analytical ``logp_ddm``): the walk starts at ``-a + 2 a z`` between absorbing
boundaries at ``-a`` and ``+a`` with unit noise, so the boundary *separation* in
Navarro-Fuss terms is ``2 a``. Response ``+1`` is the upper boundary (made more
likely by a positive drift), ``-1`` (or ``0``) the lower one.

An optional fifth column ``sv`` gives the drift trial-to-trial variability
(``v ~ Normal(v, sv)`` per trial, ssm-simulators' ``ddm_sdv``), integrated out in
closed form (Ratcliff & Tuerlinckx 2002; Blurton, Kesselmeier & Gondan 2012; HDDM's
``wfpt`` and HSSM's ``logp_ddm_sdv``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ddm_log_likelihood", "series_plan"]

_LOG_PI = math.log(math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_PI2 = math.pi**2
# Exponents below this are clamped: e^-60 is far below float64 resolution relative
# to the leading term, and it keeps exp() out of its slow subnormal/underflow path.
_MIN_EXPONENT = -60.0


def _k_small(u: float, error: float) -> float:
    """Terms the small-time series needs for ``error`` (Navarro & Fuss 2009)."""
    c = 2.0 * math.sqrt(2.0 * math.pi * u) * error
    if c >= 1.0:
        return 2.0
    return max(2.0 + math.sqrt(-2.0 * u * math.log(c)), math.sqrt(u) + 1.0)


def _k_large(u: float, error: float) -> float:
    """Terms the large-time series needs for ``error`` (Navarro & Fuss 2009)."""
    floor = 1.0 / (math.pi * math.sqrt(u))
    c = math.pi * u * error
    if c >= 1.0:
        return floor
    return max(math.sqrt(-2.0 * math.log(c) / (_PI2 * u)), floor)


# Plain dict rather than functools.lru_cache so torch.compile traces it cleanly.
_PLANS: dict[float, tuple[float, int, int]] = {}


def series_plan(error: float = 1e-7) -> tuple[float, int, int]:
    """Static switch point and term counts for an absolute error bound ``error``.

    Navarro & Fuss pick, per normalized time ``u``, the series needing fewer terms.
    ``k_small(u)`` increases and ``k_large(u)`` decreases in ``u``, so that choice is
    "small-time iff ``u < u_switch``" with ``u_switch`` their crossing, and the most
    terms either series ever needs in its own region is its count at ``u_switch``.
    Using those maxima everywhere gives data-independent shapes (jit/vmap friendly)
    while every element still meets the bound.

    Returns:
        ``(u_switch, n_pairs, n_large)``: the small-time series sums over
        ``k = -n_pairs .. n_pairs`` (a superset of Navarro-Fuss' ``ceil(k_small)``
        consecutive indices around 0), the large-time series over
        ``k = 1 .. n_large``.
    """
    plan = _PLANS.get(error)
    if plan is not None:
        return plan
    if not 0.0 < error < 1.0:
        raise ValueError(f"error must lie in (0, 1), got {error}")
    lo, hi = 1e-12, 1e4  # k_small < k_large at lo, the reverse at hi
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if _k_small(mid, error) < _k_large(mid, error):
            lo = mid
        else:
            hi = mid
    u_switch = hi
    n_small = math.ceil(_k_small(u_switch, error))
    n_pairs = max(1, math.ceil((n_small - 1) / 2))
    n_large = max(1, math.ceil(_k_large(u_switch, error)))
    plan = _PLANS[error] = (u_switch, n_pairs, n_large)
    return plan


def _log_small_time(u: torch.Tensor, w: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """log f(u | 0, 1, w) from the small-time (image) series, leading term factored.

    f = (2 pi u^3)^(-1/2) sum_k (w + 2k) exp(-(w + 2k)^2 / (2u)). Dividing by the
    k = 0 term leaves 1 + sum_{k != 0} (1 + 2k/w) exp(-2k(k + w)/u), whose exponents
    are all negative, so nothing overflows and tiny ``u`` stays finite in log space.
    """
    k = torch.arange(1, n_pairs + 1, dtype=u.dtype, device=u.device)
    k = torch.cat([-k.flip(0), k])
    wk = w.unsqueeze(-1)
    expo = torch.clamp(-2.0 * k * (k + wk) / u.unsqueeze(-1), min=_MIN_EXPONENT)
    corr = ((1.0 + 2.0 * k / wk) * torch.exp(expo)).sum(-1)
    # 1 + corr > 0 mathematically; the clamp only guards pathological w near 0/1.
    tiny = torch.finfo(u.dtype).tiny
    log_bracket = torch.log(torch.clamp(1.0 + corr, min=tiny))
    return (
        torch.log(w) - w * w / (2.0 * u) - _HALF_LOG_2PI - 1.5 * torch.log(u)
    ) + log_bracket


def _log_large_time(u: torch.Tensor, w: torch.Tensor, n_large: int) -> torch.Tensor:
    """log f(u | 0, 1, w) from the large-time (Fourier) series, k = 1 factored out.

    f = pi sum_k k sin(k pi w) exp(-k^2 pi^2 u / 2); pulling out exp(-pi^2 u / 2)
    keeps huge ``u`` from underflowing to log(0).
    """
    k = torch.arange(1, n_large + 1, dtype=u.dtype, device=u.device)
    wk = w.unsqueeze(-1)
    expo = torch.clamp(
        -(k * k - 1.0) * (0.5 * _PI2) * u.unsqueeze(-1), min=_MIN_EXPONENT
    )
    terms = k * torch.sin(k * math.pi * wk) * torch.exp(expo)
    tiny = torch.finfo(u.dtype).tiny
    return _LOG_PI - 0.5 * _PI2 * u + torch.log(torch.clamp(terms.sum(-1), min=tiny))


def _log_ftt01w(u: torch.Tensor, w: torch.Tensor, error: float) -> torch.Tensor:
    """log density of the standardized process (v = 0, separation 1) at lower bound.

    Both series are evaluated on every element, each on inputs sanitized to its own
    region (the other region's elements get ``u_switch``), then merged by
    ``torch.where``: the unused branch is finite, so its zero upstream gradient
    cannot turn into NaN.
    """
    u_switch, n_pairs, n_large = series_plan(float(error))
    use_small = u < u_switch
    u_s = torch.where(use_small, u, torch.full_like(u, u_switch))
    u_l = torch.where(use_small, torch.full_like(u, u_switch), u)
    return torch.where(
        use_small, _log_small_time(u_s, w, n_pairs), _log_large_time(u_l, w, n_large)
    )


def _log_drift_factor(
    v: torch.Tensor, sv: torch.Tensor | None, distance: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """log of the drift's factor in the lower-boundary density at decision time tau.

    With a fixed drift v the density is ``exp(-v d - v^2 tau / 2)`` times the
    drift-free one, ``d`` the start's distance to the boundary (``2 a w``, not HDDM's
    ``a w``: the separation here is ``2 a``). Averaged over ``v ~ Normal(v, sv)`` it
    is ``exp((sv^2 d^2 - 2 v d - v^2 tau) / (2 (1 + sv^2 tau))) / sqrt(1 + sv^2 tau)``
    (Blurton et al. 2012, eq. 3); ``sv=None`` is the fixed drift.
    """
    if sv is None:
        return -v * distance - 0.5 * v * v * tau
    spread = sv * sv * tau
    return (sv * sv * distance * distance - 2.0 * v * distance - v * v * tau) / (
        2.0 * (1.0 + spread)
    ) - 0.5 * torch.log1p(spread)


def ddm_log_likelihood(
    theta: torch.Tensor, x: torch.Tensor, *, error: float = 1e-7
) -> torch.Tensor:
    """Exact DDM log-likelihood log p(rt, response | v, a, z, t[, sv]), vectorized.

    Args:
        theta: ``(..., 4)`` columns ``v, a, z, t``: drift, half boundary separation
            as in ssm-simulators' ``ddm`` (boundaries at +-a, so separation 2a, like
            HSSM's ``a * 2``), relative start ``z`` in (0, 1) and non-decision time
            ``t`` in seconds; diffusion noise sd is 1. A fifth column ``sv`` (as in
            ssm-simulators' ``ddm_sdv``) is the sd of the drift across trials,
            integrated out in closed form; without it the drift is fixed.
        x: ``(..., 2)`` columns ``rt`` (seconds) and response (+1 upper boundary,
            -1 or 0 lower boundary). Broadcasts against ``theta``.
        error: Navarro-Fuss absolute error bound on the standardized density
            f(u | 0, 1, w), u = (rt - t) / (2a)^2. Small-time terms are enough when
            2 + sqrt(-2 u log(2 sqrt(2 pi u) error)) (at least sqrt(u) + 1) terms
            are used, large-time terms when sqrt(-2 log(pi u error) / (pi^2 u)) (at
            least 1 / (pi sqrt(u))) are; see :func:`series_plan` for how this becomes
            a fixed count (5 and 5 for error = 1e-7, switch at u ~ 0.18). At the
            switch f is 0.4-1.4 for w in [0.1, 0.9], and away from it truncation
            error falls faster than f, so this is roughly a relative bound too (in
            practice float64 results match a 40-digit reference to ~1e-15).

    Returns:
        Log-density of shape ``broadcast(theta.shape[:-1], x.shape[:-1])``, in the
        promoted floating dtype; ``-inf`` where ``rt <= t`` (with zero, not NaN,
        gradient there).
    """
    dtype = torch.promote_types(theta.dtype, x.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    theta = theta.to(dtype)
    x = x.to(dtype)
    if theta.shape[-1] not in (4, 5):
        raise ValueError(
            f"theta needs columns v, a, z, t (and optionally sv), got {theta.shape[-1]}"
        )
    v, a, z, t = theta[..., :4].unbind(-1)
    sv = theta[..., 4] if theta.shape[-1] == 5 else None
    rt, response = x.unbind(-1)

    upper = response > 0
    # Upper-boundary density = lower-boundary density of the mirrored process.
    v_f = torch.where(upper, -v, v)
    w = torch.where(upper, 1.0 - z, z)
    sep = 2.0 * a

    tau = rt - t
    valid = tau > 0
    # Any positive stand-in keeps the discarded entries (and their grads) finite.
    tau = torch.where(valid, tau, torch.ones_like(tau))
    u = tau / (sep * sep)

    log_p = (
        _log_ftt01w(u, w, error)
        - 2.0 * torch.log(sep)
        + _log_drift_factor(v_f, sv, sep * w, tau)
    )
    return torch.where(valid, log_p, torch.full_like(log_p, -math.inf))


def decision_probability(
    v: float, a: float, z: float, t: float, deadline: float, response: float
) -> float:
    """P(the walk reaches `response`'s boundary before `deadline`), in closed form:
    the first-passage distribution function's large-time series (Feller 1968;
    Blurton, Kesselmeier & Gondan 2012), with as many terms as float64 needs.

    A reference in numpy, for checking what integrates the density (omission
    probabilities, `sbi_plugins.likelihoods.omission`); parameters as in
    `ddm_log_likelihood`."""
    import numpy as np

    tau = deadline - t
    if tau <= 0:
        return 0.0
    sep = 2.0 * a
    drift, start = (-v, sep * (1.0 - z)) if response > 0 else (v, sep * z)
    # probability of ever reaching this boundary (Feller's gambler's ruin)
    if abs(drift) < 1e-12:
        reach = 1.0 - start / sep
    else:
        reach = math.expm1(-2.0 * drift * (sep - start)) / math.expm1(
            -2.0 * drift * sep
        )
        reach *= math.exp(-2.0 * drift * start)
    u = tau / sep**2
    terms = max(50, math.ceil(math.sqrt(2.0 * 40.0 / (_PI2 * u))) + 10)
    k = np.arange(1, terms + 1, dtype=np.float64)
    rate = 0.5 * drift**2 + 0.5 * k**2 * _PI2 / sep**2
    tail = (
        math.pi
        / sep**2
        * math.exp(-drift * start)
        * np.sum(k * np.sin(k * math.pi * start / sep) * np.exp(-rate * tau) / rate)
    )
    return float(reach - tail)
