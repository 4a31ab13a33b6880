"""Tests for the exact DDM (Wiener first-passage time) log-likelihood."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, stats

try:
    from sbi_plugins_ddm.wfpt import ddm_log_likelihood, series_plan
except ImportError:  # plugin not installed: import it from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "ddm"))
    from sbi_plugins_ddm.wfpt import ddm_log_likelihood, series_plan

F64 = torch.float64


def _logp(theta, rt, response, dtype=F64, **kw) -> np.ndarray:
    """Evaluate the torch likelihood on array-likes, returning numpy."""
    rt = np.atleast_1d(np.asarray(rt, dtype=np.float64))
    x = np.stack([rt, np.broadcast_to(np.asarray(response, np.float64), rt.shape)], -1)
    out = ddm_log_likelihood(
        torch.as_tensor(np.asarray(theta, np.float64), dtype=dtype),
        torch.as_tensor(x, dtype=dtype),
        **kw,
    )
    return out.double().numpy()


# ---------------------------------------------------------------------------
# Independent reference: mpmath, plain (unfactored) Navarro-Fuss series at 40
# digits, small-time for u < 1 with k = -30..30 and large-time for u >= 1 with
# k = 1..100 (the first omitted terms are below e^-1800 and e^-50000 relative).
# Separation is 2a (ssm-simulators' ``ddm``); the upper boundary is the lower one
# of the mirrored process (v -> -v, z -> 1 - z).
# ---------------------------------------------------------------------------


def _ref_f01(u: mpmath.mpf, w: mpmath.mpf, series: str) -> mpmath.mpf:
    if series == "small":
        s = mpmath.fsum(
            (w + 2 * k) * mpmath.exp(-((w + 2 * k) ** 2) / (2 * u))
            for k in range(-30, 31)
        )
        return s / mpmath.sqrt(2 * mpmath.pi * u**3)
    s = mpmath.fsum(
        k * mpmath.exp(-(k**2) * mpmath.pi**2 * u / 2) * mpmath.sin(k * mpmath.pi * w)
        for k in range(1, 101)
    )
    return mpmath.pi * s


def _ref_logp(v, a, z, t, rt, response, series: str | None = None) -> float:
    with mpmath.workdps(40):
        return _ref_logp_mp(v, a, z, t, rt, response, series)


def _ref_logp_mp(v, a, z, t, rt, response, series: str | None) -> float:
    sep = 2 * mpmath.mpf(a)
    up = response > 0
    w = 1 - mpmath.mpf(z) if up else mpmath.mpf(z)
    vf = -mpmath.mpf(v) if up else mpmath.mpf(v)
    tau = mpmath.mpf(rt) - mpmath.mpf(t)
    u = tau / sep**2
    if series is None:
        series = "small" if u < 1 else "large"
    f = _ref_f01(u, w, series)
    return float(mpmath.log(f) - 2 * mpmath.log(sep) - vf * sep * w - vf**2 * tau / 2)


def _grid() -> list[tuple[float, ...]]:
    pts = []
    for v, a, z, t, tau, r in itertools.product(
        (-2.5, 0.0, 1.3),
        (0.35, 1.0, 2.4),
        (0.15, 0.5, 0.85),
        (0.0, 0.7),
        (2e-4, 0.05, 0.4, 2.0, 15.0),
        (-1, 1),
    ):
        pts.append((v, a, z, t, t + tau, r))
    return pts


@pytest.fixture(scope="module")
def grid_reference() -> tuple[np.ndarray, np.ndarray]:
    pts = np.array(_grid())
    ref = np.array([_ref_logp(*p) for p in pts])
    return pts, ref


def test_reference_series_agree_where_both_converge() -> None:
    """Sanity of the reference itself: both many-term series give the same value."""
    for p in [(0.5, 0.8, 0.3, 0.1, 0.4, 1), (-1.0, 0.4, 0.7, 0.0, 0.3, -1)]:
        assert _ref_logp(*p, series="small") == pytest.approx(
            _ref_logp(*p, series="large"), abs=1e-12
        )


def test_matches_mpmath_reference_float64(grid_reference) -> None:
    pts, ref = grid_reference
    theta, x = torch.tensor(pts[:, :4], dtype=F64), torch.tensor(pts[:, 4:], dtype=F64)
    out = ddm_log_likelihood(theta, x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)


def test_matches_mpmath_reference_float32(grid_reference) -> None:
    """float32, against the reference at the float32-rounded inputs.

    Rounding rt itself to float32 moves a 0.2 ms decision time after t = 0.7 s by
    ~3e-4 relative (log-density off by ~4e-3); that is the input's precision, not
    the algorithm's, so it is taken out of the comparison.
    """
    pts, _ = grid_reference
    pts32 = pts.astype(np.float32)
    ref = np.array([_ref_logp(*p) for p in pts32.astype(np.float64)])
    out = ddm_log_likelihood(torch.tensor(pts32[:, :4]), torch.tensor(pts32[:, 4:]))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("error", [1e-3, 1e-5, 1e-10])
def test_error_bound_respected(grid_reference, error: float) -> None:
    """Cruder bounds use fewer terms but stay within them (relative, see docs)."""
    pts, ref = grid_reference
    theta, x = torch.tensor(pts[:, :4], dtype=F64), torch.tensor(pts[:, 4:], dtype=F64)
    out = ddm_log_likelihood(theta, x, error=error).numpy()
    np.testing.assert_allclose(out, ref, rtol=10 * error, atol=10 * error)


def test_series_plan_for_default_error() -> None:
    u_switch, n_pairs, n_large = series_plan(1e-7)
    assert u_switch == pytest.approx(0.1791, abs=1e-3)
    assert (n_pairs, n_large) == (2, 5)
    with pytest.raises(ValueError):
        series_plan(0.0)


# Navarro & Fuss' own MATLAB code, as recorded in HDDM's test suite
# (hddm/tests/matlab_values.py): (v, t, a_separation, z_relative, rt, err, density
# at the lower boundary). Only rows computed with err <= 1e-7 are kept.
_NF_MATLAB = [
    (0.6056010862462016, 0.16871208306308166, 1.5524386791394562,
     0.1286318302691049, 0.3836652143729468, 1e-07, 0.62063048896871487),
    (0.7175299762398688, 0.3566056886339434, 2.220795104898356,
     0.45773365470000554, 2.1966769477884225, 1e-07, 0.030138660738276948),
    (0.38713456753496744, 0.07157449665799648, 2.2096131432869957,
     0.017240717413939843, 3.426246718806154, 1e-07, 0.00089937286951603833),
    (-0.5187897244595112, 0.21532637320553233, 2.481938472673327,
     0.18482168074390404, 1.0697490678038166, 1e-09, 0.23165988979463398),
    (-0.24925121543920914, 0.05753410930092823, 2.1709492103847565,
     0.477487812061141, 2.211403925199262, 1e-08, 0.084455290527924637),
    (-0.5719411096293123, 0.28837526790403306, 2.1929805341020145,
     0.2243768947148022, 1.0791694385505024, 1e-10, 0.27868915917309367),
]  # fmt: skip


@pytest.mark.parametrize("row", _NF_MATLAB)
def test_matches_navarro_fuss_matlab(row) -> None:
    v, t, sep, z, rt, err, density = row
    p = math.exp(_logp([v, sep / 2, z, t], rt, -1)[0])
    # their err bounds the standardized density; the density is that over sep^2
    assert p == pytest.approx(density, rel=1e-8, abs=err / sep**2)


# ---------------------------------------------------------------------------
# Normalization and choice probabilities
# ---------------------------------------------------------------------------
def _p_upper(v: float, a: float, z: float) -> float:
    """Closed-form probability of hitting the upper boundary (separation 2a)."""
    sep = 2 * a
    if v == 0:
        return z
    return math.expm1(-2 * v * sep * z) / math.expm1(-2 * v * sep)


@pytest.mark.parametrize(
    "theta",
    [
        (0.0, 1.0, 0.5, 0.3),
        (2.5, 0.4, 0.2, 0.0),
        (-1.5, 2.2, 0.8, 1.0),
        (0.7, 0.3, 0.9, 0.1),
        (-3.0, 2.5, 0.1, 2.0),
    ],
)
def test_density_integrates_to_one(theta) -> None:
    v, a, z, t = theta
    scale = (2 * a) ** 2  # natural time scale of the first passage

    def mass(response: int) -> float:
        def f(tau: float) -> float:
            return math.exp(_logp(theta, t + tau, response)[0])

        pieces = [(0.0, 0.2 * scale), (0.2 * scale, 3 * scale), (3 * scale, np.inf)]
        return sum(
            integrate.quad(f, lo, hi, epsabs=1e-11, epsrel=1e-10, limit=200)[0]
            for lo, hi in pieces
        )

    upper, lower = mass(1), mass(-1)
    assert upper + lower == pytest.approx(1.0, abs=1e-5)
    assert upper == pytest.approx(_p_upper(v, a, z), abs=1e-5)


# ---------------------------------------------------------------------------
# Against ssm-simulators
# ---------------------------------------------------------------------------
_DELTA_T = 1e-3
# The simulator takes Euler steps and checks the boundaries only every delta_t, so
# it overshoots: discretely monitored boundaries act like continuous ones moved out
# by beta * sqrt(delta_t) * sigma with beta = -zeta(1/2) / sqrt(2 pi) ~ 0.5826
# (Broadie, Glasserman & Kou 1997). At delta_t = 1e-3 that is ~0.018 per boundary,
# visible with 20000 trials (chi-square p ~ 1e-20 uncorrected for a = 0.5), so the
# simulated data are compared with the exact density at the moved boundaries.
_BGK_BETA = 0.5826


def _discretization_corrected(theta: tuple[float, ...]) -> tuple[float, ...]:
    v, a, z, t = theta
    shift = _BGK_BETA * math.sqrt(_DELTA_T)
    return (v, a + shift, (2 * a * z + shift) / (2 * (a + shift)), t)


@pytest.mark.parametrize(
    "theta", [(0.8, 0.7, 0.4, 0.3), (-1.5, 1.2, 0.6, 0.5), (2.0, 0.6, 0.3, 0.2)]
)
def test_matches_ssm_simulators(theta) -> None:
    simulator_mod = pytest.importorskip("ssms.basic_simulators.simulator")
    n = 20_000
    out = simulator_mod.simulator(
        theta=np.array([theta], dtype=np.float32),
        model="ddm",
        n_samples=n,
        delta_t=_DELTA_T,
        max_t=20.0,
        random_state=1,
    )
    rts = out["rts"][:, 0].astype(np.float64)
    choices = out["choices"][:, 0]
    assert set(np.unique(choices)) <= {-1, 1}
    assert (rts > theta[3]).all()

    th = _discretization_corrected(theta)
    # Choice probability (also pins the sign convention: +1 = upper = v > 0 side).
    p_up = _p_upper(*th[:3])
    sd = math.sqrt(p_up * (1 - p_up) / n)
    assert abs((choices == 1).mean() - p_up) < 4 * sd

    # RT histogram per response: deciles of the simulated RTs, expected counts
    # from the analytic density (trapezoid on a fine grid), Pearson chi-square.
    chi2, cells = 0.0, 0
    for response in (1, -1):
        r = rts[choices == response]
        edges = np.quantile(r, np.linspace(0, 1, 11))
        edges[0], edges[-1] = theta[3], theta[3] + 20.0
        expected = []
        for lo, hi in itertools.pairwise(edges):
            g = np.linspace(lo, hi, 2001)
            expected.append(n * integrate.trapezoid(np.exp(_logp(th, g, response)), g))
        observed = np.histogram(r, edges)[0]
        chi2 += float(((observed - np.array(expected)) ** 2 / expected).sum())
        cells += len(expected)
    assert stats.chi2.sf(chi2, cells - 1) > 1e-3


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("theta", "rt", "response"),
    [
        ((0.5, 1.0, 0.4, 0.3), 0.9, 1),  # large-time series
        ((-1.2, 0.6, 0.7, 0.2), 0.35, -1),  # small-time series
        # on the switch: finite differences straddle both series
        ((2.0, 1.5, 0.5, 0.1), 0.1 + series_plan(1e-7)[0] * 9.0, 1),
        ((0.0, 0.3, 0.2, 0.0), 0.001, -1),  # tiny u
        ((-0.3, 0.3, 0.8, 0.5), 15.0, 1),  # huge u
    ],
)
def test_gradcheck(theta, rt, response) -> None:
    th = torch.tensor(theta, dtype=F64, requires_grad=True)
    x = torch.tensor([rt, response], dtype=F64)
    assert torch.autograd.gradcheck(lambda p: ddm_log_likelihood(p, x), (th,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_across_domain(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    n = 4000
    lo = torch.tensor([-3.0, 0.3, 0.1, 0.0], dtype=F64)
    hi = torch.tensor([3.0, 2.5, 0.9, 2.0], dtype=F64)
    theta = lo + (hi - lo) * torch.rand(n, 4, generator=g, dtype=F64)
    # decision times log-uniform on [1e-4, 20] s, with the extremes pinned to the
    # smallest and largest boundary: u from 4e-6 up to 55
    tau = torch.exp(
        math.log(1e-4) + math.log(2e5) * torch.rand(n, generator=g, dtype=F64)
    )
    theta[:2, 1], tau[:2] = 2.5, 1e-4
    theta[2:4, 1], tau[2:4] = 0.3, 20.0
    response = torch.randint(0, 2, (n,), generator=g).to(F64) * 2 - 1
    x = torch.stack([theta[:, 3] + tau, response], -1)
    # a few invalid trials (rt <= t) must not poison the gradient either
    x[-5:, 0] = theta[-5:, 3] - 0.01
    theta = theta.to(dtype).requires_grad_(True)
    out = ddm_log_likelihood(theta, x.to(dtype))
    assert torch.isfinite(out[:-5]).all()
    assert torch.isneginf(out[-5:]).all()
    out[:-5].sum().backward()
    assert torch.isfinite(theta.grad).all()
    assert (theta.grad[-5:] == 0).all()


def test_shared_theta_gradient_matches_sum_of_per_trial() -> None:
    """Broadcasting one theta over trials gives the summed per-trial gradient."""
    x = torch.tensor([[0.5, 1.0], [0.8, -1.0], [2.5, 0.0]], dtype=F64)
    th = torch.tensor([0.4, 0.9, 0.45, 0.2], dtype=F64, requires_grad=True)
    ddm_log_likelihood(th, x).sum().backward()
    rows = th.detach().expand(3, 4).clone().requires_grad_(True)
    ddm_log_likelihood(rows, x).sum().backward()
    torch.testing.assert_close(th.grad, rows.grad.sum(0))


# ---------------------------------------------------------------------------
# Edge cases and shapes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invalid_rt_is_neg_inf_with_zero_gradient(dtype) -> None:
    th = torch.tensor([0.5, 1.0, 0.5, 0.3], dtype=dtype, requires_grad=True)
    x = torch.tensor([[0.3, 1.0], [0.1, -1.0], [0.0, 0.0], [0.31, 1.0]], dtype=dtype)
    out = ddm_log_likelihood(th, x)
    assert torch.isneginf(out[:3]).all()
    assert torch.isfinite(out[3])
    out[:3].sum().backward()  # sum of -inf: still a clean zero gradient
    assert (th.grad == 0).all()


def test_response_zero_is_lower_boundary() -> None:
    th = torch.tensor([0.7, 0.8, 0.35, 0.25], dtype=F64)
    rt = torch.tensor([0.4, 0.9, 3.0], dtype=F64)
    lower = ddm_log_likelihood(th, torch.stack([rt, -torch.ones(3, dtype=F64)], -1))
    zero = ddm_log_likelihood(th, torch.stack([rt, torch.zeros(3, dtype=F64)], -1))
    upper = ddm_log_likelihood(th, torch.stack([rt, torch.ones(3, dtype=F64)], -1))
    torch.testing.assert_close(zero, lower, rtol=0, atol=0)
    assert not torch.allclose(upper, lower)


def test_upper_density_is_mirrored_lower_density() -> None:
    a = _logp([0.9, 0.8, 0.3, 0.2], [0.5, 1.5], 1)
    b = _logp([-0.9, 0.8, 0.7, 0.2], [0.5, 1.5], -1)
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_broadcast_shapes_and_dtype_promotion() -> None:
    theta = torch.tensor([[0.5, 1.0, 0.5, 0.2], [-0.5, 0.8, 0.6, 0.1]], dtype=F64)
    x = torch.tensor([[0.6, 1.0], [0.9, -1.0], [1.4, 1.0]], dtype=torch.float32)
    out = ddm_log_likelihood(theta[:, None, :], x)
    assert out.shape == (2, 3)
    assert out.dtype == F64
    assert ddm_log_likelihood(theta[0], x).shape == (3,)
    torch.testing.assert_close(out[1], ddm_log_likelihood(theta[1], x.double()))
