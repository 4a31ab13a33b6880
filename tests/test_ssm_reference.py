"""Reference densities of the ssm plugin's `ddm_sdv` (drift variability in closed
form) and `full_ddm` (start and onset variability by quadrature): the closed form
against the fixed-drift density, total mass, ssm-simulators' own trials, limits
and gradients, and `check`'s comparison with the shipped estimators."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import sbi_plugins
from sbi_plugins.check import check_simulator

pytest.importorskip("ssms.config")

from sbi_plugins_ddm.variability import full_ddm_log_likelihood
from sbi_plugins_ddm.wfpt import ddm_log_likelihood
from sbi_plugins_ssm.simulator import DELTA_T
from ssms.basic_simulators.simulator import simulator as ssms_simulator

F64 = torch.float64


def _box_points(model: str, n: int, seed: int) -> np.ndarray:
    simulator = sbi_plugins.get_simulator(model)
    lower = np.array([p.lower for p in simulator.parameters])
    upper = np.array([p.upper for p in simulator.parameters])
    uniform = np.random.default_rng(seed).uniform(size=(n, len(lower)))
    return lower + (upper - lower) * uniform


def _trials(theta: np.ndarray, seed: int, after: float = 0.0) -> torch.Tensor:
    """(rt, response) rows, rt exponential (mean 1 s) `after` s past the onset."""
    rng = np.random.default_rng(seed)
    rt = theta[:, 3] + after + rng.exponential(1.0, len(theta))
    return torch.tensor(np.stack([rt, rng.choice([-1.0, 1.0], len(theta))], -1))


def _gauss_legendre_pieces(edges: np.ndarray, nodes: int = 8):
    """Nodes and weights integrating over each interval between sorted ``edges``."""
    unit, weight = np.polynomial.legendre.leggauss(nodes)
    lo, hi = edges[:-1, None], edges[1:, None]
    return lo + (hi - lo) * 0.5 * (unit + 1.0), (hi - lo) * 0.5 * weight


def _distribution_function(model: str, theta, response: int, at: np.ndarray):
    """P(rt <= at, response) by quadrature of the registered density on a grid
    graded towards the lower end of rt, through 30 (2a)^2 beyond it (the tail
    past that is negligible: the density decays at least like exp(-pi^2 u / 2),
    u = (rt - t) / (2a)^2)."""
    simulator = sbi_plugins.get_simulator(model)
    theta = np.asarray(theta, dtype=np.float64)
    t = theta[3]
    lower = t - theta[6] if model == "full_ddm" else t
    scale = (2.0 * theta[1]) ** 2
    grid = lower + scale * np.geomspace(1e-5, 30.0, 200)
    kinks = [t + theta[6]] if model == "full_ddm" else []
    at = np.clip(np.asarray(at, dtype=np.float64), lower, grid[-1])
    edges = np.unique(np.concatenate([[lower], grid, kinks, at]))
    rt, weight = _gauss_legendre_pieces(edges)
    x = torch.tensor(np.stack([rt.ravel(), np.full(rt.size, response)], -1))
    with torch.no_grad():
        density = simulator.log_likelihood(torch.tensor(theta), x).exp().numpy()
    cumulative = np.concatenate(
        [[0.0], np.cumsum((density.reshape(rt.shape) * weight).sum(1))]
    )
    return np.interp(at, edges, cumulative)


# ---------------------------------------------------------------------------
# ddm_sdv: the closed form
# ---------------------------------------------------------------------------
def test_zero_drift_variability_is_the_ddm_density():
    theta = _box_points("ddm_sdv", 500, 0)
    theta[:, 4] = 0.0
    x = _trials(theta, 0)
    theta = torch.tensor(theta)
    with_sv = ddm_log_likelihood(theta, x)
    without = ddm_log_likelihood(theta[:, :4], x)
    assert torch.isfinite(without).all()
    torch.testing.assert_close(with_sv, without, rtol=0, atol=1e-12)


def test_drift_variability_is_the_fixed_drift_density_averaged_over_drifts():
    """The closed form against the fixed-drift density averaged over v ~ N(v, sv)
    by adaptive quadrature, both with a tight series bound (the factor exp(-v d)
    of drifts far out magnifies the series' truncation error)."""
    theta = _box_points("ddm_sdv", 20, 1)
    x = _trials(theta, 1)
    closed = ddm_log_likelihood(torch.tensor(theta), x, error=1e-14).numpy()
    for row, xi, expected in zip(theta, x, closed, strict=True):
        v, sv = row[0], row[4]

        def weighted(drift, row=row, xi=xi, v=v, sv=sv, expected=expected) -> float:
            fixed = torch.tensor([drift, *row[1:4]])
            log_f = ddm_log_likelihood(fixed, xi, error=1e-14).item()
            return math.exp(log_f - expected) * stats.norm.pdf(drift, v, sv)

        averaged, _ = integrate.quad(weighted, v - 12 * sv, v + 12 * sv, epsabs=1e-12)
        assert math.log(averaged) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------
# Both models: a density of rt and response
# ---------------------------------------------------------------------------
POINTS = {
    "ddm_sdv": [
        ((0.8, 1.0, 0.5, 0.3, 1.5), 1e-6),
        ((-2.5, 0.35, 0.2, 0.1, 2.4), 1e-6),
        ((1.5, 2.3, 0.8, 1.0, 0.3), 1e-6),
    ],
    # full_ddm's own quadrature (4 x 20 nodes) sets its tolerance: measured 2e-5
    # for fast decisions (a 0.35), 3.3e-3 where starts come within 0.006 of the
    # lower boundary (a 0.31, z 0.3, sz 0.2: the start's range is z -+ 0.3)
    "full_ddm": [
        ((0.8, 1.0, 0.5, 0.5, 0.1, 1.0, 0.125), 1e-6),
        ((-2.5, 0.35, 0.35, 0.3, 0.18, 1.8, 0.24), 1e-4),
        ((2.0, 2.3, 0.65, 1.0, 0.05, 0.3, 0.01), 1e-6),
        ((0.5, 0.31, 0.3, 0.5, 0.2, 1.0, 0.2), 5e-3),
    ],
}
CASES = [(model, *point) for model, points in POINTS.items() for point in points]


@pytest.mark.parametrize(("model", "theta", "tolerance"), CASES)
def test_density_integrates_to_one_over_rt_and_both_responses(model, theta, tolerance):
    """Total mass 1, the test's own quadrature (8 nodes on each of 200 graded
    pieces) being far finer than the tolerance."""
    total = sum(
        _distribution_function(model, theta, response, [np.inf])[0]
        for response in (-1, 1)
    )
    assert total == pytest.approx(1.0, abs=tolerance)


@pytest.mark.parametrize(
    ("model", "theta"),
    [
        ("ddm_sdv", (0.8, 1.0, 0.5, 0.3, 1.5)),
        ("ddm_sdv", (-1.2, 0.6, 0.35, 0.2, 0.8)),
        ("full_ddm", (0.8, 1.0, 0.5, 0.5, 0.1, 1.0, 0.125)),
        ("full_ddm", (-1.0, 0.7, 0.4, 0.4, 0.15, 1.5, 0.2)),
    ],
)
def test_matches_ssm_simulators_trials(model, theta):
    """200,000 trials of ssm-simulators against the registered density: counts per
    response in the simulated RT deciles, Pearson chi-square (so choice share and
    RT distribution at once; Monte Carlo error is the chi-square's variance).

    The simulator's decision times are the first 1 ms step past the boundary: at a
    step's end its distribution function is the continuous one's (with the
    boundaries moved out, `as_simulated`), so bin edges sit half a step after a
    step and the density is integrated to half a step before each edge (full_ddm's
    continuous onset averages over the steps' phase: the same rule on average)."""
    n = 200_000
    np.random.seed(3)  # ddm_sdv draws its drifts from numpy's global generator
    out = ssms_simulator(
        theta=np.array([theta], dtype=np.float32),
        model=model,
        n_samples=n,
        delta_t=DELTA_T,
        max_t=20.0,
        random_state=3,
    )
    rts, choices = out["rts"][:, 0].astype(np.float64), out["choices"][:, 0]
    assert (rts > 0).all()
    chi2, cells = 0.0, 0
    for response in (-1, 1):
        rt = np.sort(rts[choices == response])
        edges = np.quantile(rt, np.linspace(0.1, 0.9, 9))
        if model == "ddm_sdv":
            steps = np.round((edges - theta[3]) / DELTA_T) + 0.5
            edges = theta[3] + steps * DELTA_T
        observed = np.diff(np.searchsorted(rt, edges), prepend=0, append=len(rt))
        cdf = _distribution_function(
            model, theta, response, np.append(edges - DELTA_T / 2, np.inf)
        )
        expected = n * np.diff(cdf, prepend=0.0)
        chi2 += float(((observed - expected) ** 2 / expected).sum())
        cells += len(expected)
    assert stats.chi2.sf(chi2, cells - 1) > 1e-3


# ---------------------------------------------------------------------------
# full_ddm: limits, gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("spread", [0.0, 1e-6])
def test_full_ddm_without_start_and_onset_variability_is_ddm_sdv(spread):
    """sz, st -> 0 leaves the drift-variability density: exactly at 0 (nothing to
    average), to O(spread^2) just above it (rt 0.1 s or more past the onset, where
    the log-density's curvature in rt is moderate)."""
    theta = _box_points("full_ddm", 300, 2)
    theta[:, [4, 6]] = spread
    x = _trials(theta, 2, after=0.1)
    full = full_ddm_log_likelihood(torch.tensor(theta), x)
    sdv = ddm_log_likelihood(torch.tensor(theta[:, [0, 1, 2, 3, 5]]), x)
    assert torch.isfinite(sdv).all()
    torch.testing.assert_close(full, sdv, rtol=0, atol=1e-12 if spread == 0 else 1e-6)


@pytest.mark.parametrize("model", ["ddm_sdv", "full_ddm"])
def test_gradients_are_finite_at_random_box_points(model):
    """Finite gradients in every parameter on the simulator's own trials across the
    box (NUTS with likelihood="exact" needs them), corners included."""
    simulator = sbi_plugins.get_simulator(model)
    theta = _box_points(model, 400, 4)
    corners = [
        [p.lower for p in simulator.parameters],
        [p.upper for p in simulator.parameters],
    ]
    theta = np.vstack([theta, corners])
    x = simulator.simulate(theta, np.random.default_rng(5))
    keep = np.isfinite(x[:, 0])
    t = torch.tensor(theta[keep], requires_grad=True)
    log_p = simulator.log_likelihood(t, torch.tensor(x[keep]))
    assert torch.isfinite(log_p).all()
    (grad,) = torch.autograd.grad(log_p.sum(), t)
    assert torch.isfinite(grad).all()


def test_full_ddm_gradient_matches_finite_differences():
    """Through the clipped onset window (rt inside t -+ st) and the start's range."""
    theta = torch.tensor([0.6, 0.9, 0.45, 0.5, 0.12, 0.8, 0.2], dtype=F64)
    x = torch.tensor([[0.45, 1.0], [0.62, -1.0], [1.4, 1.0]], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda th: full_ddm_log_likelihood(th, x), (theta.requires_grad_(),)
    )


def test_full_ddm_is_impossible_before_the_earliest_onset_with_zero_gradient():
    theta = torch.tensor([0.6, 0.9, 0.45, 0.5, 0.12, 0.8, 0.2], dtype=F64)
    theta.requires_grad_()
    log_p = full_ddm_log_likelihood(theta, torch.tensor([[0.29, 1.0], [0.31, 1.0]]))
    assert log_p[0] == -math.inf
    assert torch.isfinite(log_p[1])
    (grad,) = torch.autograd.grad(log_p[1], theta)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------
# check: the shipped estimators against the references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["ddm_sdv", "full_ddm"])
def test_check_compares_the_shipped_estimator_with_the_reference(model):
    """`check` scores the reference on the simulator's trials (contract) and the
    estimator against it; the reference explains fresh simulations at least as
    well as the estimator trained on them (KL(exact || learned) not below 0)."""
    report = check_simulator(model, heldout=300, sbc=None, simulations=300)
    checks = {c.name: c for c in report.checks}
    assert checks["exact likelihood"].status == "pass"
    error = checks["error vs exact"]
    assert error.status != "skip"
    assert error.values["n"] > 250  # a few fall outside the training support
    assert error.values["kl"] > -4 * error.values["kl_se"]
    if model == "ddm_sdv":
        assert error.status == "pass", error.message
