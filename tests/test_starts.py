"""Every configuration starts: any pooling of any parameter, on any valid data; where
a start is impossible, one line names the parameter or the rows."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

import sbi_plugins
from sbi_plugins.contract import Parameter
from sbi_plugins.data import prepare_data
from sbi_plugins.errors import DataError
from sbi_plugins.inference.starts import chain_starts, log_density, start_problem
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import make_lapse
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.model.pooling import POOLING_MODES


def _ddm():
    return sbi_plugins.get_simulator("ddm")


def _trials(seed: int, subjects: int = 6, trials: int = 40):
    from sbi_plugins_ddm import simulate_dataset

    population = {"v": (0.5, 1.0), "a": (1.2, 0.4), "z": (0.5, 0.1), "t": (0.3, 0.15)}
    return simulate_dataset(subjects, trials, seed=seed, population=population)[0]


def _model(data, pooling, lik, p_outlier=None, formulas=None):
    """The model `fit` builds, and its keyword arguments."""
    sim = lik.simulator
    prepared = prepare_data(data, sim, "participant_id")
    parameters = plan_model(sim, data, "participant_id", pooling, formulas)
    lapse = make_lapse(p_outlier, sim, prepared.x)
    return (*build_model(parameters, prepared, lik, lapse), prepared)


def _starts(data, pooling, lik, p_outlier=None, chains=4, formulas=None):
    """The chains' starting values of the model, as the NUTS method makes them."""
    model, kwargs, prepared = _model(data, pooling, lik, p_outlier, formulas)
    problem = start_problem(model, kwargs, prepared)
    return model, kwargs, chain_starts(model, kwargs, model.start(), chains, 0, problem)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("parameter", ["v", "a", "z", "t"])
def test_every_pooling_of_every_ddm_parameter_starts(parameter, mode, seed):
    """The others at the default (partial), this one in each mode: every chain's
    start has a finite log density under the exact likelihood. On the old random
    start, `t` by subject failed on 8 of 8 data sets."""
    lik = Likelihood(_ddm())
    model, kwargs, starts = _starts(_trials(seed), {parameter: mode}, lik)
    assert len(starts) == 4
    for start in starts:
        assert np.isfinite(log_density(model, kwargs, start))
    # the chains do not all start at one point
    assert any(not torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


@pytest.mark.parametrize("p_outlier", [None, 0.05, True])
def test_the_default_starts_with_the_shipped_estimator_and_fast_guesses(p_outlier):
    """All parameters by subject (the default), the learned likelihood, a fast guess
    (0.05 s) in one subject: a valid start with or without lapses."""
    from sbi_plugins.estimators.resolve import shipped_estimator

    data = _trials(3)
    data.loc[5, "rt"] = 0.05
    lik = Likelihood(_ddm(), shipped_estimator(_ddm()))
    model, kwargs, starts = _starts(data, "partial", lik, p_outlier)
    for start in starts:
        assert np.isfinite(log_density(model, kwargs, start))
        if p_outlier is True:
            assert 0 < float(start["p_outlier"]) < 1


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_a_formula_with_t_by_subject_starts(pooling):
    """Formulas start the same way (t's intercept below every RT), beside pooled
    parameters in every mode."""
    formulas = {"t": "t ~ 1 + (1|participant_id)", "v": "v ~ 0 + C(participant_id)"}
    model, kwargs, starts = _starts(
        _trials(4), pooling, Likelihood(_ddm()), formulas=formulas
    )
    for start in starts:
        assert np.isfinite(log_density(model, kwargs, start))


def _with_t_from(lower: float):
    """The DDM with a training box whose smallest `t` is `lower`."""
    sim = _ddm()
    parameters = tuple(
        Parameter("t", lower, 2.0) if p.name == "t" else p for p in sim.parameters
    )
    return dataclasses.replace(sim, parameters=parameters)


def test_a_row_below_the_smallest_shift_is_refused_naming_it_and_the_remedy():
    sim = _with_t_from(0.1)
    data = _trials(5)
    data.loc[7, "rt"] = 0.08
    with pytest.raises(DataError, match=r"'rt'.*0\.1.*'t'.*row 7.*p_outlier"):
        sbi_plugins.fit(data, sim, group="participant_id", likelihood="exact")
    # with lapses the same row is the lapse's to explain: the fit starts
    model, kwargs, _ = _model(data, "partial", Likelihood(sim), 0.05)
    assert np.isfinite(log_density(model, kwargs, model.start()))


def test_a_start_with_zero_likelihood_names_the_rows_and_group():
    """A likelihood that is zero for some rows whatever the parameters (here: a
    plugin's exact likelihood that refuses RTs over 8 s) stops before sampling with
    one line naming them, not Pyro's 'cannot find valid initial params'."""
    sim = _ddm()

    def refusing(theta, x):
        lp = sim.log_likelihood(theta, x)
        return torch.where(x[..., 0] > 8.0, torch.full_like(lp, -np.inf), lp)

    strict = dataclasses.replace(sim, log_likelihood=refusing)
    data = _trials(6)
    data.loc[11, "rt"] = 9.0
    subject = data.loc[11, "participant_id"]
    with pytest.raises(
        DataError,
        match=rf"cannot start sampling: the likelihood is zero at row 11 "
        rf"\(participant_id {subject}\) at the starting values.*p_outlier",
    ):
        sbi_plugins.fit(data, strict, group="participant_id", likelihood="exact")


@pytest.mark.slow
def test_the_cli_default_ddm_fit_runs_with_a_fast_guess(tmp_path):
    """What a user types first: every parameter by subject, the shipped estimator,
    one fast guess in the data; then the same with --p-outlier."""
    data = _trials(7, subjects=4, trials=30)
    data.loc[3, "rt"] = 0.05
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    for extra in ([], ["--p-outlier", "estimate"]):
        out = tmp_path / f"fit{len(extra)}.nc"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sbi_plugins.cli",
                "fit",
                "ddm",
                str(path),
                "--group",
                "participant_id",
                "--draws",
                "30",
                "--tune",
                "30",
                "--chains",
                "2",
                "--no-progress",
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert out.exists()
        if not extra:  # the cause (fast guesses) is said before its symptoms
            said = [line for line in result.stderr.splitlines() if "warning:" in line]
            cause = [i for i, line in enumerate(said) if "--p-outlier" in line]
            symptoms = [i for i, line in enumerate(said) if "r-hat" in line]
            assert cause and symptoms and cause[0] < symptoms[0], said
            assert "far faster than the rest" in said[cause[0]]  # before sampling
            assert any("Fix this first" in said[i] for i in cause)  # and after
    import arviz as az

    fit = az.from_netcdf(out)
    assert "p_outlier" in fit.posterior
    assert "Beta(2, 38)" in fit.posterior.attrs["p_outlier"]
