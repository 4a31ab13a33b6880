"""`fit(method="vi")`: Pyro SVI with a multivariate-normal guide, its draws in the
same InferenceData as NUTS's, checked against NUTS on the cookie data."""

from __future__ import annotations

import json
import warnings

import arviz as az
import matplotlib
import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.inference.variational import WINDOW, stopped_improving

matplotlib.use("Agg")

POPULATION = ["lam_mu", "lam_sigma"]


COMMON = {"group": "location", "likelihood": "exact", "progress": False}
VI = {**COMMON, "method": "vi", "posterior_predictive": False}


@pytest.fixture(scope="module")
def fits(cookie_data):
    """The same hierarchical cookie model by VI and by NUTS (exact likelihood)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vi = sbi_plugins.fit(cookie_data, "cookie", seed=1, **VI)
        nuts = sbi_plugins.fit(
            cookie_data, "cookie", seed=1, draws=1000, tune=500, chains=2, **COMMON
        )
    return vi, nuts


@pytest.mark.slow
def test_vi_means_sit_within_half_a_nuts_sd_and_its_sds_are_not_wider(fits):
    vi, nuts = fits
    names = [*POPULATION, "lam"]
    a = az.summary(vi, var_names=names, round_to="none")
    b = az.summary(nuts, var_names=names, round_to="none")
    gap = ((a["mean"] - b["mean"]).abs() / b["sd"]).max()
    assert gap < 0.5
    ratio = a["sd"] / b["sd"]
    assert ratio.between(0.6, 1.2).all(), ratio


@pytest.mark.slow
def test_vi_result_is_an_everyday_inference_data(fits, tmp_path):
    vi, _ = fits
    attrs = vi.posterior.attrs
    assert attrs["inference_method"] == "vi"
    assert attrs["vi_guide"] == "AutoMultivariateNormal"
    assert attrs["vi_converged"] == 1
    elbo = json.loads(attrs["vi_elbo_trace"])
    assert elbo[-1] > elbo[0]  # the optimisation improved the ELBO
    assert vi.posterior.sizes == {"chain": 4, "draw": 1000, "location": 5}
    assert vi.sample_stats["log_q"].shape == (4, 1000)
    assert az.loo(vi).elpd_loo == pytest.approx(az.loo(fits[1]).elpd_loo, abs=2.0)
    az.plot_trace(vi, var_names=POPULATION)
    path = tmp_path / "vi.nc"
    vi.to_netcdf(str(path))
    back = az.from_netcdf(path)
    np.testing.assert_array_equal(back.posterior["lam"], vi.posterior["lam"])


@pytest.mark.slow
def test_same_seed_same_draws_and_seeds_agree(cookie_data, fits):
    """Parameter averaging after convergence puts the guide on the optimum, so
    another seed's means differ by far less than a posterior sd."""
    one = fits[0]
    again, other = (
        sbi_plugins.fit(cookie_data, "cookie", seed=seed, **VI) for seed in (1, 2)
    )
    np.testing.assert_array_equal(one.posterior["lam"], again.posterior["lam"])
    for name in POPULATION:
        means = [f.posterior[name].mean().item() for f in (one, other)]
        sd = one.posterior[name].std().item()
        assert abs(means[0] - means[1]) < 0.2 * sd, name


def test_convergence_waits_for_the_elbo_to_stop_improving():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 5, 2 * WINDOW)
    falling = list(1000 - 2.0 * np.arange(2 * WINDOW) + noise)
    flat = list(1000 + noise)
    assert not stopped_improving(falling)
    assert stopped_improving(flat)


def test_an_unknown_method_lists_vi(cookie_data):
    with pytest.raises(SbiPluginsError, match="'nuts', 'vi'"):
        sbi_plugins.fit(cookie_data, "cookie", method="advi")
