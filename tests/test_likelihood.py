"""The learned likelihood as a Pyro distribution, and its training-domain guard."""

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS

import sbi_plugins
from sbi_plugins.errors import DataError


@pytest.fixture(scope="module")
def lik(cookie):
    return sbi_plugins.likelihood(cookie)


def test_it_is_a_pyro_distribution_over_data_rows(lik):
    d = lik(torch.tensor([[9.0], [5.0]]))
    assert isinstance(d, dist.TorchDistribution)
    assert d.batch_shape == (2,) and d.event_shape == (1,)
    lp = d.log_prob(torch.tensor([[9.0], [5.0]]))
    assert lp.shape == (2,) and torch.isfinite(lp).all()


def test_shipped_estimator_matches_the_poisson_mass(lik):
    """Where the cookie data live (rates 4-16) the learned mass is within KL 0.003
    nats of the Poisson at every rate (150 cookies: at most ~0.45 nats of elpd), and
    the learned masses sum to one."""
    lam = torch.linspace(4.0, 16.0, 25, dtype=torch.float64)[:, None]
    K = int(lik.estimator.support["chips"][1]) + 1
    counts = torch.arange(0, K, dtype=torch.float64)[:, None, None]
    learned = lik.log_prob(lam, counts)
    exact = torch.distributions.Poisson(lam[:, 0]).log_prob(counts[..., 0])
    kl = (exact.exp() * (exact - learned)).sum(0)
    assert kl.max() < 0.003, kl
    total = learned.exp().sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_parameters_outside_the_box_get_minus_infinity(lik):
    x = torch.tensor([[3.0], [3.0], [3.0]])
    lp = lik(torch.tensor([[50.0], [-1.0], [10.0]])).log_prob(x)
    assert lp[0] == -math.inf and lp[1] == -math.inf and torch.isfinite(lp[2])


def test_exact_likelihood_is_the_poisson(cookie):
    exact = sbi_plugins.likelihood(cookie, exact=True)
    theta, x = torch.tensor([[7.5]]), torch.tensor([[4.0]])
    expected = torch.distributions.Poisson(7.5).log_prob(torch.tensor(4.0))
    assert exact(theta).log_prob(x).item() == pytest.approx(expected.item())


@pytest.mark.parametrize(
    "value,message",
    [
        (-1.0, "negative or non-integer"),
        (2.5, "negative or non-integer"),
        (500.0, r"outside \[0, \d+\], the range the cookie estimator saw in training"),
        (float("nan"), "missing or non-finite"),
    ],
)
def test_observations_outside_the_trained_support_raise(lik, value, message):
    x = torch.tensor([[3.0], [value]])
    with pytest.raises(DataError, match=rf"'chips'.*{message}|{message}.*row 1"):
        lik(torch.tensor([[9.0], [9.0]])).log_prob(x)


def test_user_written_pyro_model_samples_with_nuts(lik):
    """The talk's SBItoPyro use: a Pyro model of one's own, the learned likelihood
    inside `pyro.plate`, NUTS from Pyro. The posterior mean of a single rate from 60
    Poisson(8) counts lands within 4 posterior sd of the data mean."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.poisson(8.0, size=60), dtype=torch.float64)[:, None]

    def model(x):
        lam = pyro.sample("lam", dist.Uniform(0.1, 40.0).to_event(0))
        with pyro.plate("cookies", len(x)):
            pyro.sample("chips", lik(lam.expand(len(x), 1)), obs=x)

    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(model), num_samples=200, warmup_steps=150, disable_progbar=True)
    mcmc.run(x.double())
    draws = mcmc.get_samples()["lam"]
    assert abs(draws.mean().item() - x.mean().item()) < 4 * draws.std().item()


def test_user_model_with_an_impossible_count_fails_before_sampling(lik):
    x = torch.tensor([[3.0], [999.0]], dtype=torch.float64)

    def model(x):
        lam = pyro.sample("lam", dist.Uniform(0.1, 40.0))
        with pyro.plate("cookies", 2):
            pyro.sample("chips", lik(lam.expand(2, 1)), obs=x)

    # Pyro re-raises it as a ValueError that carries the message and the trace
    with pytest.raises(ValueError, match="'chips': values at row 1 lie outside"):
        MCMC(NUTS(model), num_samples=5, warmup_steps=5, disable_progbar=True).run(x)


def test_samples_come_from_the_simulator(lik):
    torch.manual_seed(0)
    draws = lik(torch.tensor([[6.0]], dtype=torch.float64)).sample((4000,))
    assert draws.shape == (4000, 1, 1)
    assert (draws == draws.round()).all()
    assert abs(draws.mean().item() - 6.0) < 4 * math.sqrt(6.0 / 4000)


def test_grouped_scoring_equals_scoring_each_row(lik, cookie):
    """The once-per-group table gives the very numbers row-by-row scoring gives,
    with and without leading draw dimensions; so does the exact likelihood."""
    gen = torch.Generator().manual_seed(0)
    theta = 0.5 + 30 * torch.rand(7, 5, 1, generator=gen, dtype=torch.float64)
    index = torch.randint(0, 5, (40,), generator=gen)
    x = torch.randint(0, 30, (40, 1), generator=gen).double()
    for scorer in (lik, sbi_plugins.likelihood(cookie, exact=True)):
        grouped = scorer.log_prob_grouped(theta, index, x)
        by_row = scorer.log_prob(theta[:, index, :], x)
        assert grouped.shape == (7, 40)
        torch.testing.assert_close(grouped, by_row, rtol=1e-5, atol=1e-5)
        single = scorer.log_prob_grouped(theta[3], index, x)
        torch.testing.assert_close(single, by_row[3], rtol=1e-5, atol=1e-5)


def test_grouped_gradients_equal_row_by_row_gradients(lik):
    """NUTS follows the gradient: one flat gather from the per-group table gives
    sbi's gradients, and the shipped cookie estimator does take that path."""
    from sbi_plugins.estimators import grouped

    assert lik._grouped is grouped.count_log_prob  # the build-time check passed
    gen = torch.Generator().manual_seed(1)
    theta = 0.5 + 30 * torch.rand(3, 5, 1, generator=gen, dtype=torch.float64)
    theta.requires_grad_(True)
    index = torch.randint(0, 5, (60,), generator=gen)
    x = torch.randint(0, 40, (60, 1), generator=gen).double()
    (fast,) = torch.autograd.grad(lik.log_prob_grouped(theta, index, x).sum(), theta)
    (slow,) = torch.autograd.grad(lik.log_prob(theta[:, index, :], x).sum(), theta)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_rows_distribution_guards_groups_outside_the_box(lik):
    theta = torch.tensor([[5.0], [45.0]], dtype=torch.float64)
    index = torch.tensor([0, 1, 0])
    lp = lik.rows(theta, index).log_prob(torch.tensor([[4.0], [4.0], [6.0]]))
    assert torch.isfinite(lp[[0, 2]]).all() and lp[1] == -math.inf


@pytest.mark.parametrize("name", ["cookie", "ddm"])
def test_pointwise_log_likelihood_equals_scoring_each_row(name):
    """The log-likelihood group, scored per group in batches of draws, holds sbi's
    row-by-row numbers for every draw and row (DDM: both choices, rt < t too)."""
    from sbi_plugins.data import prepare_data
    from sbi_plugins.results.pointwise import pointwise_log_likelihood

    sim = sbi_plugins.get_simulator(name)
    lik = sbi_plugins.likelihood(sim, progress=False)
    rng = np.random.default_rng(0)
    groups, chains, draws = 4, 2, 3
    theta = sim.sample_training_prior(chains * draws * groups, rng).reshape(
        chains, draws, groups, -1
    )
    group_index = np.repeat(np.arange(groups), 5)
    x = sim.simulate(theta[0, 0][group_index], rng)
    if name == "ddm":
        x[:3, 0] = 0.5 * theta[0, 0, group_index[:3], 3]  # rt < t: impossible rows
    frame = {o: x[:, j] for j, o in enumerate(sim.observable_names)}
    data = prepare_data(pd.DataFrame({**frame, "g": group_index}), sim, "g")
    got = pointwise_log_likelihood(lik, theta, data.x, data.group_index)
    rows = torch.as_tensor(theta[:, :, data.group_index], dtype=torch.float64)
    with torch.no_grad():
        want = lik.log_prob(rows, torch.as_tensor(data.x)).numpy()
    assert got.shape == (chains, draws, len(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if name == "ddm":
        assert np.isneginf(got[0, 0, :3]).all()
