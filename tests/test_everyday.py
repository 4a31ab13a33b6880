"""Messages a tired scientist meets: each says what is wrong and what to do."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.cli import main, parse_p_outlier
from sbi_plugins.data import prepare_data
from sbi_plugins.errors import DataError, DomainWarning, SbiPluginsError
from sbi_plugins.estimators.resolve import shipped_estimator
from sbi_plugins.inference.mass import (
    DRAWS_PER_DIMENSION,
    dense_pays,
    last_window,
)
from sbi_plugins.inference.nuts_method import warn_divergences, warn_poor_mixing
from sbi_plugins.likelihoods.distribution import Likelihood, check_observations
from sbi_plugins.likelihoods.lapse import make_lapse
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.model.pooling import normalize_pooling
from sbi_plugins.results.diagnostics import (
    fast_guess_hints,
    warn_at_domain_edges,
    warn_of_fast_guesses,
)


def _ddm():
    return sbi_plugins.get_simulator("ddm")


def test_divergences_after_tuning_are_reported_with_the_remedy():
    stats = {"diverging": np.array([[True, False, False], [False, False, True]])}
    with pytest.warns(RuntimeWarning, match="2 of 6 transitions diverged.*0.95"):
        assert warn_divergences(stats, 0.8) == 2
    # already at 0.95: the next step up, not the value in use
    with pytest.warns(RuntimeWarning, match=r"above 0.95 \(e.g. 0.99; --target-accept"):
        warn_divergences(stats, 0.95)
    with pytest.warns(RuntimeWarning, match=r"Simplify the model"):
        warn_divergences(stats, 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_divergences({"diverging": np.zeros((2, 3), bool)}, 0.8) == 0


def test_t_at_its_lower_bound_points_to_fast_guesses_not_retraining():
    from sbi_plugins_ddm import simulate_dataset

    sim = _ddm()
    trials, _ = simulate_dataset(1, 20, seed=0)
    data = prepare_data(trials, sim, None)
    model, _ = build_model(
        plan_model(sim, trials, None, "complete"), data, Likelihood(sim)
    )
    posterior = {
        p.name: np.full((1, 50), p.parameter.lower + 0.3 * p.parameter.width)
        for p in model.parameters
    }
    posterior["t"] = np.zeros((1, 50))
    theta = model.cell_parameter_draws(posterior)
    with pytest.warns(UserWarning, match="'t' pile up at the lower.*--p-outlier"):
        warn_at_domain_edges(model, posterior, theta, data, fast_guess_hints(sim))


def test_the_domain_edge_warning_names_the_groups_column():
    """'for 1 (25%)' does not say that 1 is a participant and 25% a share of
    draws: the warning names the column and what the share is."""
    from sbi_plugins_ddm import simulate_dataset

    sim = _ddm()
    trials, _ = simulate_dataset(3, 20, seed=0)
    data = prepare_data(trials, sim, "participant_id")
    model, _ = build_model(
        plan_model(sim, trials, "participant_id", "none"), data, Likelihood(sim)
    )
    posterior = {
        p.name: np.full((1, 50, 3), p.parameter.lower + 0.3 * p.parameter.width)
        for p in model.parameters
    }
    posterior["t"][..., 1] = 0.0  # the second subject's t at its lower bound
    theta = model.cell_parameter_draws(posterior)
    label = data.group_labels[1]
    with pytest.warns(UserWarning) as caught:
        warn_at_domain_edges(model, posterior, theta, data)
    (message,) = [str(w.message) for w in caught if "'t' pile up" in str(w.message)]
    assert f"for participant_id {label} (100%) (the share of draws)" in message


def test_a_pooled_t_held_below_one_fast_guess_is_named_with_the_remedy():
    """`t` pooled cannot reach its bound: the warning names the row it is held
    below; a `t` as far below the fastest rows as clean data leave it is quiet."""
    from sbi_plugins_ddm import simulate_dataset

    sim = _ddm()
    trials, _ = simulate_dataset(2, 30, seed=0)
    trials.loc[7, "rt"] = 0.05
    data = prepare_data(trials, sim, None)
    model, _ = build_model(
        plan_model(sim, trials, None, "complete"), data, Likelihood(sim)
    )

    def draws(t: float) -> np.ndarray:
        posterior = {
            p.name: np.full((1, 50), p.parameter.lower + 0.3 * p.parameter.width)
            for p in model.parameters
        }
        posterior["t"] = np.full((1, 50), t)
        return model.cell_parameter_draws(posterior)

    with pytest.warns(
        DomainWarning, match=r"'t' is held below row 7 \(rt 0.05, t 0.048"
    ):
        (said,) = warn_of_fast_guesses(sim, model, draws(0.048), data)
    assert "--p-outlier 0.05" in said and "Fix this first" not in said
    loud = warn_of_fast_guesses(sim, model, draws(0.048), data, sampler_warned=True)
    assert "Fix this first" in loud[0]
    clean = trials.drop(index=7)
    data = prepare_data(clean, sim, None)
    model, _ = build_model(
        plan_model(sim, clean, None, "complete"), data, Likelihood(sim)
    )
    fastest = clean["rt"].min()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = fastest - 0.05  # about where clean rows leave it
        assert warn_of_fast_guesses(sim, model, draws(t), data) == []


def test_a_fit_with_one_fast_guess_and_t_pooled_says_so():
    """The trial a tired scientist makes: every parameter pooled, one 0.05 s
    guess at 0.15 s among 800 rows holds `t` near 0.12, short of the box's lower
    bound (where the bound's own warning would speak) and far below 0.3: the fit
    warns, naming the row, and records it with the domain warnings; with a lapse
    component it does not."""
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(8, 100, seed=2)
    trials.loc[11, "rt"] = 0.15
    options = dict(
        group="participant_id",
        pooling="complete",
        likelihood="exact",
        draws=100,
        tune=100,
        chains=1,
        seed=1,
        progress=False,
        posterior_predictive=False,
    )
    with pytest.warns(DomainWarning, match=r"held below row 11 \(rt 0.15, t 0.1"):
        fit = sbi_plugins.fit(trials, "ddm", **options)
    assert 0.02 < float(fit.posterior["t"].mean()) < 0.15
    assert "row 11" in fit.attrs["domain_warnings"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lapsed = sbi_plugins.fit(trials, "ddm", p_outlier=0.05, **options)
    assert not [w for w in caught if "held below" in str(w.message)]
    assert float(lapsed.posterior["t"].mean()) > 0.15


def test_rts_in_milliseconds_are_named_as_such():
    x = np.array([[500.0, 1.0], [700.0, -1.0], [650.0, 1.0]])
    with pytest.raises(DataError, match=r"in milliseconds\? Convert to seconds") as e:
        check_observations(_ddm(), shipped_estimator(_ddm()), x)
    assert "retrain" not in str(e.value)  # the units are the fix, not training


def test_responses_coded_one_and_two_get_the_mapping_spelled_out():
    x = np.array([[0.5, 1.0], [0.6, 2.0], [0.7, 2.0]])
    with pytest.raises(DataError, match=r"Coded 1 to 2\? .* 1 -> -1, 2 -> 1.* - 1"):
        check_observations(_ddm(), None, x)


def test_a_race_coded_from_minus_one_gets_the_mapping_spelled_out():
    race = sbi_plugins.get_simulator("race_no_bias_3")  # codes 0, 1, 2
    x = np.array([[0.5, -1.0], [0.6, 0.0], [0.7, 1.0]])
    pattern = r"Coded -1 to 1\? .* -1 -> 0, 0 -> 1, 1 -> 2.*df\['response'\] \+ 1 "
    with pytest.raises(DataError, match=pattern):
        check_observations(race, None, x)


def test_a_bad_response_code_is_the_only_row_named():
    x = np.array([[0.5, 1.0], [0.6, 0.0], [0.7, 2.0], [0.8, 0.0]])
    with pytest.raises(DataError, match=r"-1, 1 \(or 0-based indices 0, 1\).* row 2$"):
        check_observations(_ddm(), None, x)


def test_p_outlier_zero_means_no_lapses():
    assert make_lapse(0.0, _ddm(), np.array([[0.5, 1.0]])) is None
    assert parse_p_outlier("0") is None


def test_a_misspelled_pooling_mode_names_no_parameter():
    with pytest.raises(SbiPluginsError, match=r"^pooling 'partail' is not one of"):
        normalize_pooling("partail", _ddm(), True)


def test_cli_warnings_are_one_line(tmp_path, capsys, cookie_data):
    path = tmp_path / "cookies.csv"
    cookie_data.head(40).to_csv(path, index=False)
    code = main(
        [
            "fit", "cookie", str(path), "--group", "location", "--draws", "20",
            "--tune", "5", "--chains", "1", "--no-progress", "--likelihood", "exact",
            "--target-accept", "0.6", "--out", str(tmp_path / "fit.nc"),
        ]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    for line in err.splitlines():
        if "warning" in line.lower():
            assert line.startswith("sbi-plugins: warning: "), line


def test_chains_that_have_not_mixed_are_reported_with_the_worst_sites():
    rng = np.random.default_rng(0)
    mixed = {"mu": rng.normal(size=(4, 500)), "t": rng.normal(size=(4, 500, 3))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_poor_mixing(mixed) == []
    stuck = {
        "mu": rng.normal(size=(2, 300)) + np.array([[0.0], [3.0]]),  # chains apart
        "t": rng.normal(size=(2, 300, 3)),
    }
    with pytest.warns(RuntimeWarning, match=r"r-hat is above 1.01 for 1 of 4.*mu"):
        messages = warn_poor_mixing(stuck)
    assert "t[" not in messages[0]  # t mixed: only mu is named
    walk = {"t": np.cumsum(rng.normal(size=(2, 300, 3)), axis=1)}
    with pytest.warns(RuntimeWarning, match=r"bulk ESS is below 100.*t\[") as w:
        warn_poor_mixing(walk)
    assert "--draws 1000 --tune 1000" in str(w[0].message)  # 300 draws: at least
    assert "draws=1000, tune=1000" in str(w[0].message)  # and in fit()'s words
    long_walk = {"t": np.cumsum(rng.normal(size=(2, 1000, 3)), axis=1)}
    with pytest.warns(RuntimeWarning) as w:
        warn_poor_mixing(long_walk)
    # a fit of 1,000 draws is told to run longer than it did, not as long
    assert "--draws 2000 --tune 2000" in str(w[0].message)


def test_poor_mixing_names_groups_by_their_labels_as_az_summary_does():
    """Subjects labelled 1..3 (or s1..s3): the warning must not say `t[0]`, a
    label that does not exist, for the first of them."""
    rng = np.random.default_rng(0)
    stuck = {"t": rng.normal(size=(2, 300, 3))}
    stuck["t"][1, :, 0] += 3.0  # the first subject's chains apart
    dims, coords = {"t": ["participant_id"]}, {"participant_id": ["s1", "s2", "s3"]}
    with pytest.warns(RuntimeWarning, match=r"worst t\[s1\] ") as w:
        warn_poor_mixing(stuck, dims, coords)
    assert "t[0]" not in str(w[0].message)
    # labels that do not fit the draws never stop a fit: positions then
    with pytest.warns(RuntimeWarning, match=r"worst t\[0\] "):
        warn_poor_mixing(stuck, dims, {"participant_id": ["s1", "s2"]})


def test_a_fits_mixing_warning_names_subjects_by_their_labels():
    """Through `fit`, as a user meets it: subjects s01..s03, v and a by subject
    (centered sites), a run too short to mix; no site is named by position."""
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(3, 30, seed=1)
    trials["participant_id"] = [f"s{int(i):02d}" for i in trials["participant_id"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            likelihood="exact",
            pooling={"v": "partial", "a": "partial", "z": "complete", "t": "complete"},
            draws=10,
            tune=10,
            chains=2,
            seed=1,
            progress=False,
            posterior_predictive=False,
        )
    (mixing,) = [str(w.message) for w in caught if "r-hat is above" in str(w.message)]
    assert re.search(r"\[s0[123]\]", mixing), mixing
    assert not re.search(r"\[\d\]", mixing), mixing


def test_an_r_hat_just_above_the_limit_is_not_printed_as_the_limit():
    from sbi_plugins.inference.nuts_method import _worst

    assert _worst({"t[0]": 1.0149}, reverse=True, digits=".3f") == "worst t[0] 1.015"


def test_fast_guess_advice_says_it_comes_first_only_when_the_sampler_warned():
    quiet = fast_guess_hints(_ddm())[("t", "lower")]
    loud = fast_guess_hints(_ddm(), sampler_warned=True)[("t", "lower")]
    assert "--p-outlier" in quiet and "Fix this first" not in quiet
    assert loud.startswith(quiet) and "cause of the sampler's warnings" in loud


def test_a_dense_mass_matrix_is_asked_for_by_name_and_recorded():
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(2, 20, seed=3)
    options = dict(
        group="participant_id",
        pooling="complete",
        likelihood="exact",
        draws=5,
        tune=5,
        chains=1,
        seed=1,
        progress=False,
        posterior_predictive=False,
    )
    fit = sbi_plugins.fit(trials, "ddm", mass_matrix="dense", **options)
    assert fit.attrs["mass_matrix"] == "dense"
    # "auto", the default: 5 tuning steps are too few to estimate a covariance
    assert sbi_plugins.fit(trials, "ddm", **options).attrs["mass_matrix"] == "diagonal"
    longer = {**options, "tune": 150}  # a last window of 25 draws, 4 dimensions
    assert sbi_plugins.fit(trials, "ddm", **longer).attrs["mass_matrix"] == "dense"
    asked = sbi_plugins.fit(trials, "ddm", mass_matrix="diagonal", **longer)
    assert asked.attrs["mass_matrix"] == "diagonal"
    with pytest.raises(SbiPluginsError, match="mass_matrix must be one of auto"):
        sbi_plugins.fit(trials, "ddm", mass_matrix="full", **options)


def test_auto_takes_a_dense_mass_matrix_where_it_can_be_estimated():
    """Centered (no preset Laplace scales) and a last warm-up window with enough
    draws per dimension (Pyro's schedule: 500 of 1,000 tuning steps, 200 of 500);
    an explicit request is obeyed whatever the model."""
    assert (last_window(1000), last_window(500), last_window(10)) == (500, 200, 0)
    fits = dict(dims=26, tune=1000, preset_start=False)
    assert dense_pays("auto", **fits)
    assert not dense_pays("auto", **{**fits, "preset_start": True})
    most = 500 // DRAWS_PER_DIMENSION
    assert dense_pays("auto", **{**fits, "dims": most})
    assert not dense_pays("auto", **{**fits, "dims": most + 1})
    assert not dense_pays("auto", **{**fits, "tune": 500, "dims": most})
    assert dense_pays("dense", **{**fits, "preset_start": True, "dims": 600})
    assert not dense_pays("diagonal", **fits)


def test_a_fast_row_is_named_before_sampling_where_rt_exceeds_t_minus_st():
    """`full_ddm` learns `rt` over `t - st` (an exact edge): a fast guess holds
    that sum below it, as it holds the DDM's `t`."""
    pytest.importorskip("ssms.config")
    from sbi_plugins_ssm import simulate_dataset

    from sbi_plugins.results.diagnostics import warn_of_fast_rows

    sim = sbi_plugins.get_simulator("full_ddm")
    trials, _ = simulate_dataset(sim, 3, 60, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_of_fast_rows(sim, prepare_data(trials, sim, "participant_id")) == []
    guess = trials.copy()
    guess.loc[7, "rt"] = 0.06
    with pytest.warns(UserWarning, match=r"row 7 \(rt 0.06.*will hold \(t - st\)"):
        warn_of_fast_rows(sim, prepare_data(guess, sim, "participant_id"))


def test_fast_rows_are_named_before_sampling_without_a_lapse_component():
    """A fit without a lapse component used to name its fast guesses only after
    its whole run: they are named first, with the remedy; clean data and fits
    with a lapse component hear nothing."""
    from sbi_plugins_ddm import simulate_dataset

    from sbi_plugins.results.diagnostics import warn_of_fast_rows

    sim = _ddm()
    trials, _ = simulate_dataset(3, 60, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_of_fast_rows(sim, prepare_data(trials, sim, "participant_id")) == []
    guess = trials.copy()
    row = guess.index[guess["participant_id"] == guess["participant_id"].iloc[0]][5]
    guess.loc[row, "rt"] = 0.06
    data = prepare_data(guess, sim, "participant_id")
    with pytest.warns(UserWarning, match=rf"row {row} \(rt 0.06, its group's 4th"):
        (message,) = warn_of_fast_rows(sim, data)
    assert "--p-outlier 0.05" in message

    def stop(*args, **kwargs):
        raise RuntimeError("sampling started")

    import sbi_plugins.runner as runner

    kwargs = dict(group="participant_id", likelihood="exact", progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_sample_refined", stop)
        with (
            pytest.warns(UserWarning, match="far faster than the rest"),
            pytest.raises(RuntimeError, match="sampling started"),
        ):
            sbi_plugins.fit(guess, "ddm", **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with pytest.raises(RuntimeError, match="sampling started"):
                sbi_plugins.fit(guess, "ddm", p_outlier=0.05, **kwargs)
