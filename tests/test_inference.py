"""The one fit path: the inference interface, the prior predictive, options that
mean the same on every model, and what a fit leaves alone."""

from __future__ import annotations

import json
import random

import arviz as az
import matplotlib
import numpy as np
import pytest
import torch
from scipy import stats

import sbi_plugins
from sbi_plugins.errors import SbiPluginsError

matplotlib.use("Agg")

QUICK = {"draws": 20, "tune": 20, "chains": 2, "seed": 2, "progress": False}


@pytest.fixture(scope="module")
def cookies(cookie_data):
    return cookie_data.groupby("location").head(12).reset_index(drop=True)


@pytest.fixture(scope="module")
def trials():
    from sbi_plugins_ddm import simulate_dataset

    data, _ = simulate_dataset(3, 30, seed=4)
    data["condition"] = np.tile(["easy", "hard"], len(data) // 2)
    return data


def test_an_unknown_method_or_prior_predictive_is_refused_before_any_work(
    cookies, monkeypatch
):
    def no_estimator(*args, **kwargs):
        raise AssertionError("an estimator was resolved for a fit that cannot run")

    monkeypatch.setattr("sbi_plugins.runner.resolve_estimator", no_estimator)
    with pytest.raises(SbiPluginsError, match=r"method 'advi' is not .* 'nuts', 'vi'"):
        sbi_plugins.fit(cookies, "cookie", group="location", method="advi")
    with pytest.raises(SbiPluginsError, match=r"prior_predictive must be .* got -3"):
        sbi_plugins.fit(cookies, "cookie", group="location", prior_predictive=-3)


def test_a_fit_records_its_method_and_whether_it_compiled(cookies):
    idata = sbi_plugins.fit(
        cookies,
        "cookie",
        group="location",
        likelihood="exact",
        prior_predictive=0,
        **QUICK,
    )
    assert "prior" not in idata.groups()  # 0 draws (the CLI's default) means none
    assert idata.posterior.attrs["inference_method"] == "nuts"
    assert idata.posterior.attrs["compiled"] == 0


def _global_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


@pytest.mark.parametrize("cores", [1, 2])
def test_a_fit_leaves_the_users_global_random_state_alone(cookies, trials, cores):
    """Chains in this process (cores=1) or forked, a pooling and a formula model
    (its Laplace start), a prior predictive: the user's `random`, NumPy and torch
    global generators are where they were, and Pyro's param store is kept."""
    import pyro

    # a first fit in this process imports libraries that draw at import time
    sbi_plugins.fit(cookies, "cookie", group="location", likelihood="exact", **QUICK)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    pyro.param("users_own", torch.ones(2))
    before = _global_states()
    sbi_plugins.fit(
        cookies,
        "cookie",
        group="location",
        likelihood="exact",
        cores=cores,
        prior_predictive=5,
        **QUICK,
    )
    sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        formulas={"v": "v ~ 1 + C(condition)"},
        pooling="complete",
        likelihood="exact",
        cores=cores,
        **QUICK,
    )
    after = _global_states()
    assert before[0] == after[0]
    assert all(
        np.array_equal(a, b) for a, b in zip(before[1][1:], after[1][1:], strict=True)
    )
    assert before[1][0] == after[1][0]
    assert torch.equal(before[2], after[2])
    assert torch.equal(pyro.param("users_own").detach(), torch.ones(2))
    assert "users_own" in pyro.get_param_store()


def test_the_prior_predictive_draws_from_the_prior_and_simulates_there(cookies, cookie):
    """2,000 prior draws: `lam_mu` follows its hyperprior (Kolmogorov-Smirnov), every
    location's `lam` is inside the training box, and each simulated data set's mean
    chips per location tracks that draw's `lam` (Poisson: mean of 12 counts)."""
    idata = sbi_plugins.fit(
        cookies,
        "cookie",
        group="location",
        likelihood="exact",
        prior_predictive=2000,
        **QUICK,
    )
    prior, simulated = idata.prior, idata.prior_predictive
    assert prior.sizes == {"chain": 1, "draw": 2000, "location": 5}
    assert simulated["chips"].shape == (1, 2000, len(cookies))
    hyperprior = cookie.population_priors["lam"].hyperpriors["mu"]
    mu = prior["lam_mu"].values.ravel()
    cdf = lambda v: hyperprior.cdf(torch.as_tensor(v)).numpy()  # noqa: E731
    assert stats.kstest(mu, cdf).pvalue > 1e-3
    lam = prior["lam"].values[0]  # (draw, location)
    assert (lam >= 0.1).all() and (lam <= 40.0).all()
    location = idata.constant_data["location_idx"].values
    chips = simulated["chips"].values[0]
    means = np.stack([chips[:, location == g].mean(1) for g in range(5)], axis=1)
    standardized = (means - lam) / np.sqrt(lam / 12)
    assert abs(standardized.mean()) < 0.1 and 0.9 < standardized.std() < 1.1
    assert simulated["chips"].dtype.kind == "i"
    az.plot_ppc(idata, group="prior")


def test_a_formula_model_has_a_prior_predictive_too(trials, tmp_path):
    idata = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        formulas={"v": "v ~ 1 + C(condition) + (1|participant_id)"},
        likelihood="exact",
        prior_predictive=30,
        posterior_predictive=False,
        **QUICK,
    )
    assert {"v_Intercept", "v_C(condition)", "a", "a_mu", "t"} <= set(idata.prior)
    assert idata.prior["a"].sizes["participant_id"] == 3
    assert idata.prior_predictive["rt"].shape == (1, 30, len(trials))
    assert set(np.unique(idata.prior_predictive["response"])) <= {-1, 1}
    idata.to_netcdf(tmp_path / "fit.nc")
    back = az.from_netcdf(tmp_path / "fit.nc")
    assert {"prior", "prior_predictive"} <= set(back.groups())


def test_every_option_means_the_same_with_a_formula(trials):
    """A user's prior for a pooled parameter is used beside a formula (the formula
    path used to ignore it), and the fit records the same attrs as a pooling fit."""
    common = {
        "group": "participant_id",
        "priors": {"a": "gamma"},
        "likelihood": "exact",
        "posterior_predictive": False,
        **QUICK,
    }
    plain = sbi_plugins.fit(trials, "ddm", **common)
    mixed = sbi_plugins.fit(
        trials, "ddm", formulas={"v": "v ~ 1 + C(condition)"}, **common
    )
    priors = [json.loads(f.attrs["priors"]) for f in (plain, mixed)]
    assert priors[0]["a"] == priors[1]["a"] and "gamma" in priors[1]["a"]["prior"]
    assert json.loads(mixed.attrs["pooling"]) == {
        "v": "formula",
        "a": "partial",
        "z": "partial",
        "t": "partial",
    }
    assert set(plain.posterior.attrs) - {"created_at"} <= set(mixed.posterior.attrs)
