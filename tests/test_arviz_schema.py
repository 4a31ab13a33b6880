"""A fit's InferenceData follows ArviZ's schema: ArviZ's own plots and diagnostics
run on it, sample_stats and data have the dtypes ArviZ expects, and the recorded
energy is the Hamiltonian of each draw (Stan's `energy__`)."""

from __future__ import annotations

import math
import warnings

import arviz as az
import matplotlib
import numpy as np
import pytest

import sbi_plugins

matplotlib.use("Agg")
import matplotlib.pyplot as plt

pytestmark = pytest.mark.timeout(600)

DDM_POOLING = {"t": "complete", "z": "complete"}
INTEGER_STATS = ("n_steps", "tree_depth")
FLOAT_STATS = ("energy", "lp", "step_size", "acceptance_rate")


def _fit(*args, **kwargs) -> az.InferenceData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sbi_plugins.fit(*args, chains=2, progress=False, **kwargs)


@pytest.fixture(scope="module")
def cookie_fit() -> az.InferenceData:
    from sbi_plugins_cookie import example_data

    return _fit(
        example_data(),
        "cookie",
        group="location",
        draws=400,
        tune=400,
        seed=5,
        posterior_predictive=100,
    )


@pytest.fixture(scope="module")
def ddm_trials():
    pytest.importorskip("cssm")
    from sbi_plugins_ddm import simulate_dataset

    return simulate_dataset(3, 60, seed=2)[0]


@pytest.fixture(scope="module")
def ddm_exact_fit(ddm_trials) -> az.InferenceData:
    return _fit(
        ddm_trials,
        "ddm",
        group="participant_id",
        pooling=DDM_POOLING,
        likelihood="exact",
        draws=200,
        tune=200,
        seed=5,
        posterior_predictive=50,
    )


@pytest.fixture(scope="module")
def ddm_neural_fit(ddm_trials) -> az.InferenceData:
    return _fit(
        ddm_trials,
        "ddm",
        group="participant_id",
        pooling=DDM_POOLING,
        draws=200,
        tune=200,
        seed=5,
        posterior_predictive=50,
    )


FITS = ["cookie_fit", "ddm_exact_fit", "ddm_neural_fit"]


@pytest.fixture(params=FITS)
def idata(request) -> az.InferenceData:
    return request.getfixturevalue(request.param)


def test_sample_stats_have_arviz_dtypes(idata):
    stats = idata.sample_stats
    assert stats["diverging"].dtype == bool
    for name in INTEGER_STATS:
        assert stats[name].dtype.kind == "i", name
    for name in FLOAT_STATS:
        assert stats[name].dtype == np.float64, name
        assert np.isfinite(stats[name].values).all(), name
    depth, steps = stats["tree_depth"].values, stats["n_steps"].values
    assert (steps >= 1).all() and (depth >= 0).all()
    # a tree that kept `depth` doublings has at most 2**(depth + 1) - 1 leapfrog steps
    assert (steps <= 2 ** (depth + 1) - 1).all()
    assert ((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1)).all()
    assert (stats["step_size"] > 0).all()


def test_discrete_observables_stay_integers(idata):
    sim = sbi_plugins.get_simulator(idata.posterior.attrs["simulator"])
    for obs in sim.observables:
        for group in ("observed_data", "posterior_predictive"):
            values = idata[group][obs.name]
            if obs.kind in ("count", "choice"):
                assert values.dtype.kind == "i", (group, obs.name)
            else:
                assert values.dtype == np.float64, (group, obs.name)


def test_dtypes_survive_netcdf(idata, tmp_path):
    path = tmp_path / "fit.nc"
    idata.to_netcdf(path)
    loaded = az.from_netcdf(path)
    for group in ("sample_stats", "observed_data", "posterior_predictive"):
        for name, values in idata[group].data_vars.items():
            assert loaded[group][name].dtype == values.dtype, (group, name)


def test_energy_is_the_hamiltonian_of_each_draw(idata):
    """energy + lp is the kinetic energy of the selected state with its own
    momentum. At stationarity that momentum is N(0, M) and independent of the
    position, so the kinetic energy is chi-square(d)/2 (mean d/2, variance d/2)
    and uncorrelated with lp. Pairing the transition's starting momentum with the
    selected position also gives a chi-square(d)/2 mean, but a correlation of about
    -0.5 with lp; the starting Hamiltonian goes below -lp. Five standard errors."""
    stats = idata.sample_stats
    lp = stats["lp"].values.ravel()
    kinetic = stats["energy"].values.ravel() + lp
    # every posterior variable of these models is a sampled site: d is their size
    d = sum(int(np.prod(v.shape[2:])) for v in idata.posterior.data_vars.values())
    n = kinetic.size
    assert kinetic.min() >= 0
    assert abs(kinetic.mean() - d / 2) < 5 * math.sqrt(d / 2 / n)
    # the sample variance of chi-square(d)/2 has variance (mu4 - sigma**4) / n
    assert abs(kinetic.var() - d / 2) < 5 * math.sqrt((3 * d + d * d / 2) / n)
    assert abs(np.corrcoef(kinetic, lp)[0, 1]) < 5 / math.sqrt(n)


def test_bfmi_of_a_healthy_fit(cookie_fit):
    bfmi = az.bfmi(cookie_fit)
    assert bfmi.shape == (2,)
    assert np.isfinite(bfmi).all() and (bfmi > 0.3).all()


def test_arviz_plots_and_diagnostics_run(idata):
    names = [n for n in idata.posterior.data_vars if n.endswith(("_mu", "_sigma"))]
    try:
        az.plot_trace(idata, var_names=names)
        az.plot_energy(idata)
        az.plot_pair(idata, var_names=names, divergences=True)
        az.plot_ppc(idata, num_pp_samples=20)
    finally:
        plt.close("all")
    bfmi = az.bfmi(idata)
    assert np.isfinite(bfmi).all() and (bfmi > 0).all()
    summary = az.summary(idata)
    assert np.isfinite(summary["r_hat"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k of a short fit
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
