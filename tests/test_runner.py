"""fit(): the model, the sampler and the InferenceData it returns."""

import json
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

import sbi_plugins
from sbi_plugins.contract import Parameter
from sbi_plugins.errors import DomainWarning, SbiPluginsError

QUICK = {"draws": 60, "tune": 60, "chains": 2, "progress": False}


@pytest.fixture(scope="module")
def small_data(cookie_data):
    """Ten cookies from each location: quick to fit."""
    return cookie_data.groupby("location").head(10).reset_index(drop=True)


@pytest.fixture(scope="module")
def quick_fit(small_data, tiny_cookie_estimator):
    return sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=11,
        **QUICK,
    )


def test_groups_dims_and_coords(quick_fit, small_data):
    idata = quick_fit
    for group in (
        "posterior",
        "sample_stats",
        "log_likelihood",
        "observed_data",
        "constant_data",
        "posterior_predictive",
    ):
        assert group in idata.groups()
    post = idata.posterior
    assert post["lam"].dims == ("chain", "draw", "location")
    assert list(post["location"].values) == [1, 2, 3, 4, 5]
    assert post["lam_mu"].dims == ("chain", "draw")
    assert post["lam_sigma"].dims == ("chain", "draw")
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 60
    assert list(idata.log_likelihood.data_vars) == ["chips"]
    assert idata.log_likelihood["chips"].shape == (2, 60, len(small_data))
    assert (idata.observed_data["chips"].values == small_data["chips"].values).all()
    codes = idata.constant_data["location_idx"].values
    assert (post["location"].values[codes] == small_data["location"].values).all()
    for stat in (
        "diverging",
        "lp",
        "step_size",
        "tree_depth",
        "n_steps",
        "acceptance_rate",
    ):
        assert idata.sample_stats[stat].shape == (2, 60)


def test_group_parameters_stay_in_the_training_box(quick_fit):
    lam = quick_fit.posterior["lam"].values
    assert lam.min() >= 0.1 and lam.max() <= 40.0


def test_attrs_record_what_made_the_fit(quick_fit, tiny_cookie_estimator):
    attrs = quick_fit.posterior.attrs
    assert attrs["simulator"] == "cookie" and attrs["simulator_version"] == "1"
    assert attrs["estimator_checksum"] == tiny_cookie_estimator.checksum
    assert json.loads(attrs["pooling"]) == {"lam": "partial"}
    assert attrs["seed"] == 11 and attrs["likelihood"] == "neural"
    assert attrs["compiled"] == 0  # 50 rows, 240 iterations: not worth compiling
    assert "sbi" in json.loads(attrs["versions"])
    assert "Gamma" in json.loads(attrs["priors"])["lam"]["prior"]


def test_log_likelihood_is_the_estimator_at_each_rows_group(
    quick_fit, tiny_cookie_estimator, cookie
):
    """Recompute one draw's pointwise log-likelihood by hand."""
    import torch

    lam = quick_fit.posterior["lam"].values[1, 7]
    codes = quick_fit.constant_data["location_idx"].values
    x = quick_fit.observed_data["chips"].values
    lik = sbi_plugins.likelihood(cookie, tiny_cookie_estimator)
    expected = lik.log_prob(torch.tensor(lam[codes])[:, None], torch.tensor(x)[:, None])
    np.testing.assert_allclose(
        quick_fit.log_likelihood["chips"].values[1, 7], expected.numpy(), rtol=1e-5
    )


def test_posterior_predictive_is_simulated_at_the_draws(quick_fit):
    """Counts, whose mean per row tracks that row's group rate (4 Monte Carlo sd)."""
    pp = quick_fit.posterior_predictive["chips"].values
    assert (pp == np.round(pp)).all() and pp.min() >= 0
    lam = quick_fit.posterior["lam"].values
    codes = quick_fit.constant_data["location_idx"].values
    expected = lam[..., codes].mean(axis=(0, 1))
    observed = pp.mean(axis=(0, 1))
    sd = np.sqrt(
        lam[..., codes].mean(axis=(0, 1)) + lam[..., codes].var(axis=(0, 1))
    ) / np.sqrt(pp.shape[0] * pp.shape[1])
    assert (np.abs(observed - expected) < 4 * sd).all()


def test_netcdf_round_trip(quick_fit, tmp_path):
    path = tmp_path / "fit.nc"
    quick_fit.to_netcdf(str(path))
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(quick_fit.groups())
    np.testing.assert_array_equal(
        back.posterior["lam"].values, quick_fit.posterior["lam"].values
    )
    assert (
        back.posterior.attrs["estimator_checksum"]
        == quick_fit.posterior.attrs["estimator_checksum"]
    )
    assert float(az.loo(back).elpd_loo) == pytest.approx(
        float(az.loo(quick_fit).elpd_loo)
    )


def test_same_seed_same_draws_parallel_or_not(
    small_data, tiny_cookie_estimator, quick_fit
):
    sequential = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=11,
        cores=1,
        **QUICK,
    )
    np.testing.assert_array_equal(
        sequential.posterior["lam"].values, quick_fit.posterior["lam"].values
    )
    other = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=12,
        cores=1,
        **QUICK,
    )
    assert not np.array_equal(
        other.posterior["lam"].values, quick_fit.posterior["lam"].values
    )


@pytest.mark.parametrize(
    "pooling,shape,hyper",
    [
        ("complete", (2, 60), False),
        ("none", (2, 60, 5), False),
        ({"lam": "partial"}, (2, 60, 5), True),
    ],
)
def test_pooling_modes(small_data, tiny_cookie_estimator, pooling, shape, hyper):
    idata = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        pooling=pooling,
        estimator=tiny_cookie_estimator,
        seed=1,
        **QUICK,
    )
    assert idata.posterior["lam"].shape == shape
    assert ("lam_mu" in idata.posterior) is hyper


def test_partial_pooling_without_groups_is_refused(small_data):
    with pytest.raises(SbiPluginsError, match="'partial' need groups: pass group="):
        sbi_plugins.fit(small_data, "cookie", **QUICK)


def test_unknown_pooling_and_parameters_are_refused(small_data):
    with pytest.raises(SbiPluginsError, match="pooling 'some' is not one of"):
        sbi_plugins.fit(small_data, "cookie", group="location", pooling="some", **QUICK)
    with pytest.raises(SbiPluginsError, match="'some' for 'lam' is not one of"):
        sbi_plugins.fit(
            small_data, "cookie", group="location", pooling={"lam": "some"}, **QUICK
        )
    with pytest.raises(SbiPluginsError, match="unknown parameters mu"):
        sbi_plugins.fit(
            small_data, "cookie", group="location", pooling={"mu": "none"}, **QUICK
        )


def test_exact_likelihood_runs_the_same_model(small_data):
    idata = sbi_plugins.fit(
        small_data, "cookie", group="location", likelihood="exact", seed=2, **QUICK
    )
    assert idata.posterior.attrs["likelihood"] == "exact"
    assert idata.posterior.attrs["estimator_checksum"] == ""


def test_pile_up_at_a_bound_warns_naming_parameter_and_bound(
    registry, cookie, tiny_cookie_estimator
):
    """A simulator trained on rates up to 3 meets data with 12 chips a cookie."""
    import dataclasses

    from tests.test_registry import ToyPlugin

    narrow = dataclasses.replace(
        cookie, name="narrow", parameters=(Parameter("lam", 0.1, 3.0),)
    )
    data = pd.DataFrame({"chips": [12, 11, 13, 12] * 5})
    with (
        registry.plugin(ToyPlugin(narrow)),
        pytest.warns(
            DomainWarning, match=r"'lam' pile up at the upper bound 3 .*\[0.1, 3\]"
        ),
    ):
        idata = sbi_plugins.fit(
            data, "narrow", pooling="complete", likelihood="exact", seed=0, **QUICK
        )
    assert "upper bound" in idata.posterior.attrs["domain_warnings"]


def test_no_warning_when_draws_stay_inside(quick_fit):
    assert json.loads(quick_fit.posterior.attrs["domain_warnings"]) == []


def test_compare_refuses_fits_of_different_data(
    quick_fit, small_data, tiny_cookie_estimator
):
    other = small_data.assign(chips=small_data["chips"] + 1)
    different = sbi_plugins.fit(
        other,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=3,
        **QUICK,
    )
    with pytest.raises(SbiPluginsError, match="fitted to other data"):
        sbi_plugins.compare({"a": quick_fit, "b": different})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sbi_plugins.compare({"a": quick_fit, "b": quick_fit.copy()})
    assert list(table.columns[:2]) == ["rank", "elpd_loo"]


def test_compare_keeps_arviz_internal_deprecations_from_the_user(quick_fit):
    """ArviZ 0.23 sorts its table in place, which pandas 3.1 deprecates; the user
    can do nothing about it, so compare does not show it (other warnings pass)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sbi_plugins.compare({"a": quick_fit, "b": quick_fit.copy()})
    assert not [w for w in seen if "inplace keyword" in str(w.message)]


def test_posterior_predictive_can_be_thinned_or_skipped(
    small_data, tiny_cookie_estimator
):
    from sbi_plugins.results.predictive import predictive_draws

    assert len(predictive_draws(True, (4, 1000), 6000)) == 2_000_000 // (4 * 6000)
    assert len(predictive_draws(True, (4, 1000), 150)) == 1000
    assert len(predictive_draws(False, (4, 1000), 150)) == 0
    idata = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=4,
        posterior_predictive=7,
        **QUICK,
    )
    draws = idata.posterior_predictive["draw"].values
    assert len(draws) == 7 and draws[0] == 0 and draws[-1] == QUICK["draws"] - 1
    none = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        estimator=tiny_cookie_estimator,
        seed=4,
        posterior_predictive=False,
        **QUICK,
    )
    assert "posterior_predictive" not in none.groups()


def test_every_other_column_is_kept_as_constant_data(small_data, tmp_path):
    """Conditions and covariates go with every fit (not only formula fits), so
    plots and checks can split by them; text stays text through netCDF. The
    index `to_csv` wrote, read back by pandas as "Unnamed: 0", is not a column."""
    small_data.to_csv(tmp_path / "with_index.csv")
    small_data = pd.read_csv(tmp_path / "with_index.csv")
    assert "Unnamed: 0" in small_data.columns
    data = small_data.assign(
        batch=np.where(np.arange(len(small_data)) % 2, "early", "late"),
        oven_temp=np.linspace(180.0, 200.0, len(small_data)),
        lam=1.0,  # a column named like a posterior variable is left out
    )
    idata = sbi_plugins.fit(
        data, "cookie", group="location", likelihood="exact", seed=1, **QUICK
    )
    kept = idata.constant_data
    assert sorted(kept.data_vars) == ["batch", "location_idx", "oven_temp"]
    assert list(kept["batch"].values) == list(data["batch"])
    np.testing.assert_array_equal(kept["oven_temp"].values, data["oven_temp"])
    assert kept["batch"].dims == ("__obs__",)
    path = tmp_path / "fit.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(path)
    assert list(back.constant_data["batch"].values) == list(data["batch"])
    assert back.posterior["lam"].dims == ("chain", "draw", "location")


def test_group_labels_are_kept_when_no_posterior_variable_is_by_group(small_data):
    """A complete-pooled (or formula) fit's posterior has no group dim, yet
    plots by group need each row's group label: constant_data keeps them."""
    from sbi_plugins.quantiles import condition_labels

    idata = sbi_plugins.fit(
        small_data,
        "cookie",
        group="location",
        pooling="complete",
        likelihood="exact",
        seed=1,
        **QUICK,
    )
    assert "location" not in idata.posterior.coords
    labels = condition_labels(idata, "location")
    assert list(labels) == [str(v) for v in small_data["location"]]


def test_the_pointwise_log_likelihood_is_float32_and_loo_agrees_with_float64(
    small_data,
):
    """Half the bytes and the same PSIS-LOO: the float32 default against a float64
    fit of the same seed; False leaves the group out, a bad value is refused."""
    fits = {
        kind: sbi_plugins.fit(
            small_data,
            "cookie",
            group="location",
            likelihood="exact",
            seed=3,
            log_likelihood=kind,
            **QUICK,
        )
        for kind in (True, "float64", False)
    }
    single, double = fits[True].log_likelihood, fits["float64"].log_likelihood
    assert single["chips"].dtype == np.float32
    assert double["chips"].dtype == np.float64
    np.testing.assert_allclose(single["chips"], double["chips"], rtol=1e-6)
    elpd = [az.loo(fits[k]).elpd_loo for k in (True, "float64")]
    assert abs(elpd[0] - elpd[1]) < 0.1
    assert "log_likelihood" not in fits[False].groups()
    with pytest.raises(SbiPluginsError, match="log_likelihood must be True"):
        sbi_plugins.fit(small_data, "cookie", log_likelihood="half", **QUICK)


def _loo_fit(rows: dict[int, np.ndarray], seed: int) -> az.InferenceData:
    """A fit of 6 rows with well-behaved log-likelihoods except `rows`."""
    rng = np.random.default_rng(seed)
    pointwise = rng.normal(-1.0, 0.1, size=(2, 300, 6))
    for row, values in rows.items():
        pointwise[..., row] = values
    return az.from_dict(
        posterior={"mu": rng.normal(size=(2, 300))},
        log_likelihood={"y": pointwise},
        observed_data={"y": np.zeros(6)},
    )


def test_rows_only_a_lapse_explains_are_not_called_unreliable():
    """A row whose log-likelihood is the same at every draw gets k = inf from
    ArviZ, yet its LOO value is exact: reported apart, and not warned about; a
    row with heavy-tailed importance ratios is warned about, naming the fit."""
    from sbi_plugins.results.comparison import pareto_k_rows

    heavy = -3 * np.abs(np.random.default_rng(9).standard_cauchy((2, 300)))
    lapse_only = _loo_fit({2: np.full((2, 300), -3.2)}, seed=0)
    both = _loo_fit({2: np.full((2, 300), -3.2), 4: heavy}, seed=1)
    assert pareto_k_rows(lapse_only) == ([], [2])
    assert pareto_k_rows(both) == ([4], [2])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sbi_plugins.compare({"lapse": lapse_only, "heavy": both})
    said = [str(w.message) for w in seen if "Pareto" in str(w.message)]
    assert len(said) == 1, said  # ArviZ's own, unnamed warning is not repeated
    assert said[0].startswith("fit 'heavy': PSIS-LOO is unreliable for 1 data rows")
    assert "rows 4)" in said[0] and "1 more rows have k = inf" in said[0]
    assert "fit with p_outlier" in said[0]
    # a fast guess under a fixed lapse share: the model's density moves it a
    # hair (sd 5e-4), with a Pareto tail (shape 1) that gives ArviZ a large k
    tail = (1 - (np.arange(600) + 0.5) / 600) ** -1.0 - 1
    hair = -3.2 - 1e-5 * np.random.default_rng(2).permutation(tail).reshape(2, 300)
    lapse_fit = _loo_fit({2: hair, 4: heavy}, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = az.loo(lapse_fit, pointwise=True).pareto_k.values
    assert k[2] > 0.7 and hair.std() < 0.01
    assert pareto_k_rows(lapse_fit) == ([4], [2])
    lapse_fit.attrs["p_outlier"] = "0.05 (fixed)"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sbi_plugins.compare({"lapse": lapse_fit, "heavy": both})
    (said,) = [str(w.message) for w in seen if "'lapse'" in str(w.message)]
    assert "has a lapse component already" in said and "--p-outlier" not in said


def test_log_likelihood_is_thinned_exactly_above_its_budget():
    """All draws up to LOG_LIKELIHOOD_VALUES values, evenly spaced ones beyond,
    by the predictive's rule; a number asks for that many; nonsense is refused."""
    from sbi_plugins.results.pointwise import (
        LOG_LIKELIHOOD_VALUES,
        check_log_likelihood_draws,
        log_likelihood_draw_index,
    )

    at_budget = LOG_LIKELIHOOD_VALUES // (4 * 1000)
    assert at_budget * 4 * 1000 == LOG_LIKELIHOOD_VALUES
    every = log_likelihood_draw_index(True, (4, 1000), at_budget)
    np.testing.assert_array_equal(every, np.arange(1000))
    thinned = log_likelihood_draw_index(True, (4, 1000), at_budget + 1)
    assert len(thinned) == 999 and thinned[0] == 0 and thinned[-1] == 999
    assert 4 * len(thinned) * (at_budget + 1) <= LOG_LIKELIHOOD_VALUES
    large = log_likelihood_draw_index(True, (4, 1000), 37_200)
    assert len(large) == LOG_LIKELIHOOD_VALUES // (4 * 37_200)
    assert len(np.unique(np.diff(large))) <= 2  # evenly spaced
    assert len(log_likelihood_draw_index(250, (4, 1000), 37_200)) == 250
    for bad in (0, False, "all", 2.5):
        with pytest.raises(SbiPluginsError, match="log_likelihood_draws must be"):
            check_log_likelihood_draws(bad)


def test_thinned_log_likelihood_gives_the_loo_of_all_draws(small_data, monkeypatch):
    """The kept draws' values are the full group's at the same draws, and PSIS-LOO
    from them agrees with all draws' within 3 Monte Carlo sd of the kept draws'
    estimate (0.16 elpd here: 0.1 elpd is not what 200 draws support), which is
    itself a small part of LOO's own se (5.2)."""
    import sbi_plugins.results.pointwise as pointwise

    settings = {"draws": 400, "tune": 200, "chains": 2, "progress": False}
    rows = len(small_data)
    monkeypatch.setattr(pointwise, "LOG_LIKELIHOOD_VALUES", 2 * 100 * rows)
    fits = {
        kept: sbi_plugins.fit(
            small_data,
            "cookie",
            group="location",
            likelihood="exact",
            seed=5,
            log_likelihood_draws=kept,
            posterior_predictive=False,
            **settings,
        )
        for kept in (True, settings["draws"])
    }
    thinned, full = fits[True].log_likelihood, fits[settings["draws"]].log_likelihood
    assert thinned.sizes["draw"] == 100 and full.sizes["draw"] == 400
    assert "thinned" in thinned.attrs and "thinned" not in full.attrs
    np.testing.assert_array_equal(
        thinned["chips"], full["chips"].sel(draw=thinned["draw"])
    )
    loo = {k: az.loo(fit) for k, fit in fits.items()}
    difference = loo[True].elpd_loo - loo[settings["draws"]].elpd_loo
    noise = pointwise.elpd_monte_carlo_sd(thinned["chips"].values)
    assert abs(difference) < 3 * noise
    assert noise < loo[True].se / 10


def test_the_default_groups_keep_draws_that_loo_pit_can_pair():
    """A 10 x 100 fit's 4 x 1000 draws: the predictive keeps 500 per chain (2
    million rows) and the log-likelihood the same 500, not all 1000, which would
    break `az.loo_pit`; a 37,200-row fit's 13 predictive draws per chain are among
    the log-likelihood's 336; requests given by number are each kept as asked."""
    from sbi_plugins.results.pointwise import PAIRED_FROM, pointwise_draws

    selected, kept = pointwise_draws(True, True, (4, 1000), 1000)
    assert len(selected) == 500 and 4 * len(selected) >= PAIRED_FROM
    np.testing.assert_array_equal(selected, kept)
    selected, kept = pointwise_draws(True, True, (4, 1000), 37_200)
    assert len(selected) == 13 and len(kept) == 336
    assert set(selected) <= set(kept) and selected[0] == 0 and selected[-1] == 999
    selected, kept = pointwise_draws(True, 1000, (4, 1000), 1000)
    assert len(selected) == 500 and len(kept) == 1000
    selected, kept = pointwise_draws(200, True, (4, 1000), 1000)
    assert len(selected) == 200 and len(kept) == 1000
    selected, kept = pointwise_draws(False, True, (4, 1000), 1000)
    assert len(selected) == 0 and len(kept) == 1000


def test_loo_pit_reads_a_fit_whose_predictive_is_thinned(small_data, monkeypatch):
    """The everyday `az.plot_loo_pit(idata)` on a fit whose predictive was thinned
    by its budget: the log-likelihood keeps the same draws; where the predictive is
    too thin for that, its draws are among the log-likelihood's, so selecting them
    pairs the two."""
    import matplotlib

    matplotlib.use("Agg")
    import sbi_plugins.results.pointwise as pointwise
    import sbi_plugins.results.predictive as predictive

    rows = len(small_data)
    monkeypatch.setattr(predictive, "PREDICTIVE_ROWS", 2 * 100 * rows)
    monkeypatch.setattr(pointwise, "PAIRED_FROM", 200)
    settings = {"draws": 400, "tune": 200, "chains": 2, "progress": False, "seed": 5}
    fit = sbi_plugins.fit(
        small_data, "cookie", group="location", likelihood="exact", **settings
    )
    assert fit.posterior_predictive.sizes["draw"] == 100
    np.testing.assert_array_equal(
        fit.log_likelihood["draw"], fit.posterior_predictive["draw"]
    )
    pit = az.loo_pit(fit, y="chips")
    assert pit.shape == (rows,) and pit.min() >= 0 and pit.max() <= 1
    az.plot_loo_pit(fit, y="chips")

    monkeypatch.setattr(pointwise, "PAIRED_FROM", 201)
    fit = sbi_plugins.fit(
        small_data, "cookie", group="location", likelihood="exact", **settings
    )
    assert fit.log_likelihood.sizes["draw"] == 400
    with pytest.raises(ValueError, match="same shape"):
        az.loo_pit(fit, y="chips")
    fit.log_likelihood = fit.log_likelihood.sel(draw=fit.posterior_predictive.draw)
    np.testing.assert_allclose(az.loo_pit(fit, y="chips"), pit, atol=1e-6)


def test_a_complete_or_unpooled_prior_is_recorded_with_its_numbers():
    """attrs say which prior each value had, numbers included (it is mu's
    hyperprior in the box), not only the family's name."""
    import torch

    from sbi_plugins.contract import PopulationPrior
    from sbi_plugins.model.pooling import ParameterPlan

    prior = PopulationPrior(
        "normal",
        {
            "mu": torch.distributions.Normal(0.5, 1.5),
            "sigma": torch.distributions.HalfNormal(1.0),
        },
    )
    v = Parameter("v", -3.0, 3.0)
    for pooling in ("complete", "none"):
        described = ParameterPlan.of(v, pooling, prior).describe()
        assert described == "v ~ Normal(0.5, 1.5) in [-3, 3]", described
    partial = ParameterPlan.of(v, "partial", prior).describe()
    assert partial.startswith("v ~ normal(mu ~ Normal(0.5, 1.5), sigma ~ HalfNormal(1")


def test_a_fit_says_its_plan_and_the_columns_it_leaves_out(small_data, capsys):
    """PyMC's "Sampling 4 chains for 1_000 tune and 1_000 draw iterations", with
    what an HSSM user most often misses: a condition column no parameter uses."""
    data = small_data.assign(
        oven=np.where(np.arange(len(small_data)) % 2, "gas", "electric")
    )
    options = dict(
        group="location",
        likelihood="exact",
        draws=5,
        tune=5,
        chains=1,
        seed=1,
        posterior_predictive=False,
    )
    sbi_plugins.fit(data, "cookie", **options)
    said = capsys.readouterr().err.splitlines()[0]
    assert said.startswith(f"cookie: {len(data)} rows in 5 groups (location); lam by")
    assert "NUTS, 1 chain x (5 tuning + 5 draws)" in said
    assert said.endswith("not in the model: column 'oven'")
    sbi_plugins.fit(data, "cookie", progress=False, **options)
    assert "not in the model" not in capsys.readouterr().err
    sbi_plugins.fit(data, "cookie", p_outlier=0.05, **options)  # said, not guessed
    assert "; lapses, p_outlier = 0.05; NUTS" in capsys.readouterr().err
