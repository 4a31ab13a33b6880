"""p_outlier: the lapse mixture in the model, in the pointwise log-likelihood and in
the posterior predictive; fast guesses absorbed instead of pinning `t`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

import sbi_plugins
from sbi_plugins.cli import CliError, parse_p_outlier
from sbi_plugins.errors import DataError, SbiPluginsError
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import (
    LapseDistribution,
    apply_to_simulations,
    make_lapse,
    mix,
)


def _ddm():
    return sbi_plugins.get_simulator("ddm")


def test_lapse_density_is_uniform_over_the_observed_rts_and_the_choices():
    x = np.array([[0.4, -1.0], [1.4, 1.0], [0.9, 1.0]])
    lapse = LapseDistribution.from_data(_ddm(), x)
    assert lapse.log_density == pytest.approx(-math.log(1.0) - math.log(2))
    draws = lapse.sample(4000, np.random.default_rng(0))
    assert draws[:, 0].min() >= 0.4 and draws[:, 0].max() <= 1.4
    assert set(np.unique(draws[:, 1])) == {-1.0, 1.0}


def test_mix_is_the_log_of_the_weighted_sum():
    model = torch.tensor([[-1.0, -np.inf, -30.0], [-2.0, -3.0, -4.0]])
    share = torch.tensor([0.05, 0.2])
    got = mix(model, -0.7, share)
    p = share.numpy()[:, None]
    expected = np.log((1 - p) * np.exp(model.numpy()) + p * np.exp(-0.7))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("bad", [1.0, -0.1, "lots", dist.Normal(0.0, 1.0)])
def test_a_share_outside_zero_one_is_refused(bad):
    with pytest.raises(SbiPluginsError, match="p_outlier"):
        make_lapse(bad, _ddm(), np.array([[0.5, 1.0]]))


def test_cli_reads_a_share_or_estimate():
    assert parse_p_outlier("0.05") == 0.05
    assert parse_p_outlier("estimate") is True
    assert parse_p_outlier(None) is None
    with pytest.raises(CliError, match="share in \\[0, 1\\)"):
        parse_p_outlier("5%")


def test_lapse_rows_replace_simulations_at_the_draws_share():
    lapse = LapseDistribution.from_data(_ddm(), np.array([[0.2, -1.0], [2.2, 1.0]]))
    sims = np.full((2, 20_000, 2), -9.0)
    out = apply_to_simulations(
        sims, np.array([0.02, 0.3]), lapse, np.random.default_rng(1)
    )
    replaced = (out[..., 0] != -9.0).mean(axis=1)
    for share, got in zip([0.02, 0.3], replaced, strict=True):
        assert abs(got - share) < 4 * math.sqrt(share * (1 - share) / 20_000)
    assert out[out[..., 0] != -9.0][:, 0].min() >= 0.2


@pytest.fixture(scope="module")
def lapse_fit():
    from sbi_plugins_cookie import example_data

    return sbi_plugins.fit(
        example_data(),
        "cookie",
        group="location",
        likelihood="exact",
        p_outlier=True,
        draws=60,
        tune=60,
        chains=2,
        seed=3,
        progress=False,
        posterior_predictive=10,
        log_likelihood="float64",  # the mixture is checked to 1e-9 below
    )


def test_pointwise_log_likelihood_is_the_mixture_at_each_draw(lapse_fit):
    """What LOO reads is log((1-p) p_model + p p_lapse) at each draw's own p."""
    sim = sbi_plugins.get_simulator("cookie")
    x = lapse_fit.observed_data["chips"].values[:, None].astype(float)
    index = lapse_fit.constant_data["location_idx"].values
    lam = lapse_fit.posterior["lam"].values[0, :5]  # (draw, location)
    share = lapse_fit.posterior["p_outlier"].values[0, :5]
    model = Likelihood(sim).log_prob_grouped(
        torch.as_tensor(lam[..., None]), torch.as_tensor(index), torch.as_tensor(x)
    )
    lapse = -math.log(x.max() - x.min() + 1)
    expected = np.log(
        (1 - share[:, None]) * np.exp(model.numpy()) + share[:, None] * np.exp(lapse)
    )
    got = lapse_fit.log_likelihood["chips"].values[0, :5]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert "p_outlier ~ Beta(2, 38)" in lapse_fit.posterior.attrs["p_outlier"]
    assert 0 < float(lapse_fit.posterior["p_outlier"].mean()) < 0.2


def test_the_likelihood_check_cannot_be_skipped_by_a_reused_address():
    """Two tensors over the very same memory, same shape and version: the second,
    whose values changed behind torch's back, is still checked (the old cache,
    keyed by address, shape and version, skipped it)."""
    sim = sbi_plugins.get_simulator("cookie")
    lik = Likelihood(sim)
    values = np.array([[3.0], [4.0]])
    first = torch.from_numpy(values)
    lik(torch.tensor([[9.0], [9.0]])).log_prob(first)
    values[1, 0] = -2.0  # numpy writes do not bump torch's version counter
    second = torch.from_numpy(values)
    assert second.data_ptr() == first.data_ptr()
    with pytest.raises(DataError, match="negative or non-integer"):
        lik(torch.tensor([[9.0], [9.0]])).log_prob(second)


def _with_fast_guesses(data: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """`share` more rows of fast guesses, spread over the subjects: RT uniform in
    [0.05, 0.15] s, response a coin flip. The clean rows stay as they were."""
    rng = np.random.default_rng(seed)
    guesses = data.sample(n=round(share * len(data)), random_state=seed).copy()
    guesses["rt"] = rng.uniform(0.05, 0.15, size=len(guesses))
    guesses["response"] = rng.choice([-1, 1], size=len(guesses))
    return pd.concat([data, guesses], ignore_index=True)


@pytest.mark.slow
def test_two_percent_fast_guesses_move_subjects_less_than_half_a_sd():
    """With p_outlier, 2% fast guesses move every subject's posterior mean by less
    than 0.5 clean posterior sd. Without it they could not: the model puts `t`
    below every RT, and the guesses sit many posterior sds below the clean `t`.
    Subjects unpooled, so each comparison is one subject's own posterior."""
    import arviz as az
    from sbi_plugins_ddm import simulate_dataset

    clean, _ = simulate_dataset(3, 100, seed=11)
    dirty = _with_fast_guesses(clean, 0.02, seed=5)
    common = {
        "group": "participant_id",
        "pooling": "none",
        "likelihood": "exact",
        "p_outlier": 0.05,
        "draws": 300,
        "tune": 300,
        "chains": 2,
        "cores": 2,
        "seed": 2,
        "progress": False,
        "posterior_predictive": False,
    }
    names = ["v", "a", "z", "t"]
    reference, contaminated = (
        az.summary(
            sbi_plugins.fit(data, "ddm", **common), var_names=names, round_to="none"
        )
        for data in (clean, dirty)
    )
    gap = (contaminated["mean"] - reference["mean"]).abs() / reference["sd"]
    assert (gap < 0.5).all(), gap.sort_values().tail().to_dict()
    fastest = dirty.groupby("participant_id")["rt"].min().to_numpy()
    t = reference.loc[[f"t[{g}]" for g in range(3)]]
    without_lapses = (t["mean"].to_numpy() - fastest) / t["sd"].to_numpy()
    assert without_lapses.max() > 5, without_lapses
