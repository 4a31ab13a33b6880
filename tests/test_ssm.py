"""The ssm plugin: ssm-simulators' models by their own names, shipped estimators,
and more than two choices end to end."""

import warnings
from dataclasses import replace

import arviz as az
import matplotlib
import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.check import check_simulator
from sbi_plugins.cli import main
from sbi_plugins.estimators.training import train
from sbi_plugins.plugin.registry import get_registry

matplotlib.use("Agg")
ssms_config = pytest.importorskip("ssms.config")

from sbi_plugins_ssm import CATALOGUE, SHIPPED, manifest, simulate_dataset  # noqa: E402
from sbi_plugins_ssm.models import (  # noqa: E402
    BOX_OVERRIDES,
    RECIPE,
    sequential_sampling_model,
    ssms_version,
)

REQUIRED = ("angle", "weibull", "levy", "ornstein", "ddm_sdv", "full_ddm")


def test_every_catalogue_model_is_registered_as_ssm_simulators_spells_it():
    """Names, parameter order and bounds are the model config's (except the
    documented overrides); the version carries ssm-simulators' release, and `ddm`
    stays with the ddm plugin and its exact density."""
    registry = get_registry()
    for name in CATALOGUE:
        simulator = sbi_plugins.get_simulator(name)
        assert registry.owner(name).name == "ssm"
        config = ssms_config.model_config[name]
        assert simulator.parameter_names == list(config["params"])
        lower, upper = config["param_bounds"]
        for i, p in enumerate(simulator.parameters):
            expected = BOX_OVERRIDES.get(name, {}).get(p.name, (lower[i], upper[i]))
            assert (p.lower, p.upper) == pytest.approx(expected), (name, p.name)
        assert simulator.version.endswith(f"+ssms{ssms_version()}")
        assert simulator.observable_names == ["rt", "response"]
    assert "ddm" not in CATALOGUE
    assert registry.owner("ddm").name == "ddm"


def test_own_models_get_the_catalogues_transform_codes_and_priors():
    """`sequential_sampling_model` is the one statement of how a sequential
    sampling model enters sbi-plugins: the catalogue's models are built by it, and a
    model of one's own gets the same rt transform, codes and priors."""

    def never_called(theta, rng):
        raise AssertionError

    race = sequential_sampling_model(
        "own_race",
        never_called,
        {"v0": (0, 2), "v1": (0, 2), "a": (0, 3), "t": (0, 1)},
        choices=(0, 1, 2),
    )
    rt, response = race.observables
    assert rt.shift == "t" and rt.scale is None  # a may be 0: no scaling by a**2
    assert response.codes == (0.0, 1.0, 2.0)
    onset = sequential_sampling_model(
        "own_st",
        never_called,
        {"v": (-1, 1), "a": (0.5, 2), "t": (0.2, 1), "st": (0, 0.2)},
    )
    assert onset.observables[0].shift is None and onset.observables[0].scale == {
        "a": 2.0
    }
    # its trials may end before t: t only starts below them
    assert onset.observables[0].start_below == "t" and rt.start_below is None
    assert set(onset.population_priors) == {"v", "a", "t"}
    angle = sbi_plugins.get_simulator("angle")
    rebuilt = sequential_sampling_model(
        "angle",
        angle.simulate,
        {p.name: (p.lower, p.upper) for p in angle.parameters},
        (-1, 1),
        description=angle.description,
        version=angle.version,
    )
    assert rebuilt.observables == angle.observables
    assert rebuilt.parameters == angle.parameters


def test_a_race_simulates_its_three_codes_reproducibly_without_touching_numpy():
    simulator = sbi_plugins.get_simulator("race_no_bias_3")
    theta = np.tile([1.5, 0.5, 1.0, 1.5, 0.3, 0.3], (3000, 1))
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    x = simulator.simulate(theta, np.random.default_rng(4))
    assert (np.random.get_state()[1] == before).all()
    assert set(np.unique(x[:, 1])) == {0.0, 1.0, 2.0}
    shares = np.bincount(x[:, 1].astype(int)) / len(x)
    assert shares[0] > shares[2] > shares[1]  # ordered by drift
    assert (x[:, 0] > 0.3).all()
    again = simulator.simulate(theta, np.random.default_rng(4))
    np.testing.assert_array_equal(x, again)


def test_variability_models_draw_all_randomness_from_the_seed():
    """ddm_sdv takes its drift variability from numpy's global generator; the
    plugin seeds it from the rng argument, so equal seeds give equal data."""
    simulator = sbi_plugins.get_simulator("ddm_sdv")
    theta = np.tile([1.0, 1.0, 0.5, 0.3, 1.5], (500, 1))
    a = simulator.simulate(theta, np.random.default_rng(1))
    np.random.seed(99)  # another global state must not matter
    b = simulator.simulate(theta, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


def test_levy_rows_of_one_call_each_get_their_own_alpha():
    """ssm-simulators draws levy's noise for a whole call with one row's alpha; the
    plugin simulates each distinct alpha on its own, so rows with alpha 2
    interleaved with alpha-1 rows decide as alpha-2 rows alone do (KS two-sample
    test; with the shared noise their median was 15 times shorter)."""
    from scipy import stats

    simulator = sbi_plugins.get_simulator("levy")
    theta = np.tile([0.5, 1.0, 0.5, 1.0, 0.4], (4000, 1))
    theta[1::2, 3] = 2.0
    mixed = simulator.simulate(theta, np.random.default_rng(5))
    alone = simulator.simulate(theta[1::2], np.random.default_rng(6))
    assert stats.ks_2samp(mixed[1::2, 0], alone[:, 0]).pvalue > 0.001
    assert np.median(mixed[1::2, 0]) < np.median(mixed[::2, 0])  # lighter tails
    again = simulator.simulate(theta, np.random.default_rng(5))
    np.testing.assert_array_equal(mixed, again)


def test_the_shipped_estimators_cover_the_required_models_and_pass_check():
    """Each file loads against its simulator with the recorded checksum, and
    `check` passes on it: contract, and held-out log-likelihood on fresh
    simulations no worse than in training. A model with onset variability learns
    `rt` over its earliest value."""
    shipped = manifest()
    assert set(REQUIRED) <= set(SHIPPED)
    assert any(
        len(sbi_plugins.get_simulator(m).observables[1].codes) == 3 for m in SHIPPED
    )
    for name in SHIPPED:
        record = shipped[name]
        assert record["heldout"]["status"] == "pass", name
        assert record["kib"] < 1024
        report = check_simulator(name, heldout=1000, sbc=None)
        assert report.ok, report.format()
        (held,) = [c for c in report.checks if c.name == "held-out log-likelihood"]
        assert record["sha256"][:12] in report.format()
        if "st" in sbi_plugins.get_simulator(name).parameter_names:
            # the earliest RT is t - st: learned as the excess over it, an exact edge
            assert "(rt - (t - st)) / a^2" in report.format()
        assert (
            held.values["mean"] > held.values["training_value"] - held.values["margin"]
        )


@pytest.fixture(scope="module")
def race_fit():
    """A three-choice race fitted with a tiny estimator: the pipeline, not accuracy."""
    simulator = sbi_plugins.get_simulator("race_no_bias_3")
    tiny = replace(RECIPE, num_simulations=20_000, max_num_epochs=5)
    estimator = train(simulator, recipe=tiny, seed=0, progress=False)
    data, _ = simulate_dataset(simulator, n_subjects=3, n_trials=60, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = sbi_plugins.fit(
            data,
            "race_no_bias_3",
            group="participant_id",
            pooling="complete",
            estimator=estimator,
            draws=60,
            tune=60,
            chains=1,
            seed=3,
            progress=False,
            refine=False,
        )
    return data, idata


def test_three_choices_end_to_end(race_fit):
    """Learned likelihood over three response codes, a predictive with all three,
    a log-likelihood per row for LOO, and the plots per response."""
    from sbi_plugins import plot

    data, idata = race_fit
    predicted = np.unique(idata.posterior_predictive["response"].values)
    assert set(predicted) == {0.0, 1.0, 2.0}
    (pointwise,) = idata.log_likelihood.data_vars.values()
    assert pointwise.shape[-1] == len(data)
    assert np.isfinite(az.loo(idata).elpd_loo)
    axes = np.ravel(plot.plot_ppc(idata))
    titles = " ".join(ax.get_title() for ax in axes)
    for code in ("0", "1", "2"):
        assert f"response {code}" in titles or f"= {code}" in titles, titles
    plot.quantile_probability(idata)
    az.plot_trace(idata)


def test_a_fourth_code_in_the_data_is_refused_by_row(race_fit, tmp_path, capsys):
    data, _ = race_fit
    bad = data.copy()
    bad.loc[7, "response"] = 3
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    code = main(
        [
            "fit",
            "race_no_bias_3",
            str(path),
            "--group",
            "participant_id",
            "--out",
            str(tmp_path / "out.nc"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "accepts codes 0, 1, 2; found 3 at row 7" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.nc").exists()


def test_fit_angle_from_the_command_line_with_the_shipped_estimator(tmp_path, capsys):
    """The issue's command, `sbi-plugins fit angle data.csv --group ...`, here with
    complete pooling and a short chain: the path, not the posterior."""
    data, _ = simulate_dataset("angle", n_subjects=3, n_trials=60, seed=5)
    path = tmp_path / "angle.csv"
    data.to_csv(path, index=False)
    out = tmp_path / "angle.nc"
    code = main(
        [
            "fit",
            "angle",
            str(path),
            "--group",
            "participant_id",
            "--out",
            str(out),
            "--pooling",
            "complete",
            "--draws",
            "30",
            "--tune",
            "30",
            "--chains",
            "1",
            "--no-progress",
            "--refine",
            "off",
        ]
    )
    assert code == 0, capsys.readouterr().err
    idata = az.from_netcdf(out)
    assert idata.attrs["simulator"] == "angle"
    assert "theta" in idata.posterior


@pytest.mark.parametrize("model", SHIPPED)
def test_simulated_subjects_form_a_population_inside_every_box(model):
    """Example subjects vary around their population, not piled at the box's inner
    edge: the races' `a` in [1, 3] with the DDM's typical mean 1.0 left 7 of 10
    subjects clipped at 1.1, and the benchmark's fit diverged on that population."""
    _, truth = simulate_dataset(model, n_subjects=10, seed=0)
    simulator = sbi_plugins.get_simulator(model)
    for p in simulator.parameters:
        values = truth[p.name].to_numpy()
        edges = (p.lower + 0.05 * p.width, p.upper - 0.05 * p.width)
        if values.std() > 0:
            at_edge = np.isclose(values[:, None], edges).any(axis=1).sum()
            assert at_edge <= 2, (p.name, values)


@pytest.mark.parametrize("model", SHIPPED)
def test_rows_sharing_parameters_simulate_as_one_call_per_row_does(model):
    """A subject's trials share one parameter vector; the plugin simulates them as
    that vector's n_samples (much faster: benchmarks/repeated_rows.py). Rows of two
    vectors interleaved, and three rows of a third, must each come out as their
    own vector's trials, distributed as one ssm-simulators sample per row gives
    them: the same choice shares (4 binomial sd) and RTs (KS test)."""
    from scipy import stats

    simulator = sbi_plugins.get_simulator(model)
    lows = np.array([p.lower for p in simulator.parameters])
    highs = np.array([p.upper for p in simulator.parameters])
    vectors = lows + (highs - lows) * np.array([[0.35], [0.6], [0.5]])
    which = np.r_[np.tile([0, 1], 1500), [2, 2, 2]]
    theta = vectors[which]
    grouped = simulator.simulate(theta, np.random.default_rng(7))
    for v in (0, 1):
        mine = grouped[which == v]
        # one sample per row, one call per vector (levy's noise is per call)
        reference = simulator.simulate._call(theta[which == v], 1, 8 + v)[0]
        assert stats.ks_2samp(mine[:, 0], reference[:, 0]).pvalue > 0.001
        for code in np.unique(reference[:, 1]):
            share = (reference[:, 1] == code).mean()
            sd = np.sqrt(2 * share * (1 - share) / len(mine))
            assert abs((mine[:, 1] == code).mean() - share) <= 4 * sd + 1e-9
    # the rows of the two vectors differ, so a row given another's sample would show
    assert np.isfinite(grouped[which == 2, 0]).all()
    np.testing.assert_array_equal(
        grouped, simulator.simulate(theta, np.random.default_rng(7))
    )
