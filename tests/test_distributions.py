"""Truncated population priors: exact normalization and gradients for NUTS."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from sbi_plugins.default_plugins.priors import mean_sd_gamma
from sbi_plugins.model.distributions import TruncatedToBox, gammainc


@pytest.fixture(autouse=True)
def _float64():
    """These checks compare with scipy in double precision; restore after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("a,x", [(0.5, 0.2), (3.0, 2.0), (40.0, 35.0), (200.0, 230.0)])
def test_gammainc_shape_derivative_matches_scipy_difference(a, x):
    a_t = torch.tensor(a, requires_grad=True)
    value = gammainc(a_t, torch.tensor(x))
    (grad,) = torch.autograd.grad(value, a_t)
    h = 1e-6 * a
    reference = (special.gammainc(a + h, x) - special.gammainc(a - h, x)) / (2 * h)
    assert value.item() == pytest.approx(special.gammainc(a, x), rel=1e-8)
    assert grad.item() == pytest.approx(reference, rel=1e-5, abs=1e-12)


def test_gammainc_broadcasts_like_torch():
    a = torch.tensor([[2.0], [5.0]], requires_grad=True)
    x = torch.tensor([1.0, 3.0, 7.0])
    value = gammainc(a, x)
    assert value.shape == (2, 3)
    np.testing.assert_allclose(
        value.detach().numpy(),
        special.gammainc([[2.0], [5.0]], [1.0, 3.0, 7.0]),
        rtol=1e-8,
    )
    value.sum().backward()
    assert a.grad.shape == (2, 1) and torch.isfinite(a.grad).all()


def test_gammainc_x_derivative_is_the_gamma_density():
    a, x = torch.tensor(3.0), torch.tensor(2.0, requires_grad=True)
    (grad,) = torch.autograd.grad(gammainc(a, x), x)
    assert grad.item() == pytest.approx(stats.gamma(3.0).pdf(2.0), rel=1e-10)


@pytest.mark.parametrize(
    "base,low,high",
    [
        (lambda: mean_sd_gamma(torch.tensor(9.0), torch.tensor(2.0)), 0.1, 40.0),
        (lambda: mean_sd_gamma(torch.tensor(30.0), torch.tensor(15.0)), 0.1, 40.0),
        (
            lambda: torch.distributions.Normal(torch.tensor(2.5), torch.tensor(2.0)),
            -3.0,
            3.0,
        ),
        (
            lambda: torch.distributions.Normal(torch.tensor(9.0), torch.tensor(1.0)),
            -3.0,
            3.0,
        ),
    ],
)
def test_truncated_density_integrates_to_one(base, low, high):
    d = TruncatedToBox(base(), low, high)
    total, _ = integrate.quad(
        lambda v: math.exp(d.log_prob(torch.tensor(v)).item()), low, high, limit=200
    )
    assert total == pytest.approx(1.0, abs=1e-6)


def test_outside_the_box_is_impossible():
    d = TruncatedToBox(torch.distributions.Normal(0.0, 1.0), -1.0, 1.0)
    assert d.log_prob(torch.tensor(1.5)).item() == -math.inf
    assert torch.isfinite(d.log_prob(torch.tensor(0.99)))


def test_truncation_mass_gradients_are_correct():
    """gradcheck through the normalizer in both hyperparameters, both families."""

    def gamma_lp(mu, sigma):
        return TruncatedToBox(mean_sd_gamma(mu, sigma), 0.1, 20.0).log_prob(
            torch.tensor(7.0)
        )

    def normal_lp(mu, sigma):
        return TruncatedToBox(
            torch.distributions.Normal(mu, sigma), -3.0, 3.0
        ).log_prob(torch.tensor(1.0))

    for fn, args in (
        (gamma_lp, (9.0, 4.0)),
        (normal_lp, (2.0, 1.5)),
        (normal_lp, (6.0, 0.5)),
    ):
        inputs = tuple(torch.tensor(a, requires_grad=True) for a in args)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_far_away_population_still_has_a_finite_log_density():
    d = TruncatedToBox(torch.distributions.Normal(40.0, 0.5), -3.0, 3.0)
    lp = d.log_prob(torch.tensor(2.9))
    assert torch.isfinite(lp)


def test_rejection_sampling_stays_in_the_box():
    torch.manual_seed(0)
    d = TruncatedToBox(mean_sd_gamma(torch.tensor(9.0), torch.tensor(6.0)), 5.0, 10.0)
    draws = d.sample((5000,))
    assert draws.min() >= 5.0 and draws.max() <= 10.0
    # the truncated gamma's mean, by quadrature, within 4 Monte Carlo sd
    g = stats.gamma(9.0**2 / 36.0, scale=36.0 / 9.0)
    mass = g.cdf(10) - g.cdf(5)
    mean = integrate.quad(lambda v: v * g.pdf(v) / mass, 5, 10)[0]
    assert abs(draws.mean().item() - mean) < 4 * draws.std().item() / np.sqrt(5000)


@pytest.mark.parametrize(("low", "high"), [(-1.0, 2.0), (5.0, 7.0), (-9.0, -6.0)])
def test_truncated_draws_follow_the_truncated_density_even_far_in_a_tail(low, high):
    """Prior draws (SBC's true values, the prior predictive) come from the truncated
    density: by rejection where the box holds mass, by the grid's inverse CDF where
    it holds almost none (5 to 7 sd: 3e-7), never from a uniform stand-in."""
    from scipy import stats

    one = torch.tensor(1.0, dtype=torch.float64)
    d = TruncatedToBox(torch.distributions.Normal(0 * one, one), low, high)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = d.sample((20000,)).numpy()
    reference = stats.truncnorm(low, high)
    assert low <= x.min() and x.max() <= high
    assert abs(x.mean() - reference.mean()) < 4 * reference.std() / np.sqrt(len(x))
    assert stats.kstest(x, reference.cdf).pvalue > 1e-3
    # a uniform on the box would fail the same test
    uniform = np.random.default_rng(0).uniform(low, high, len(x))
    assert stats.kstest(uniform, reference.cdf).pvalue < 1e-6
