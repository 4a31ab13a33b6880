"""Omissions at a deadline: the data marking, the omission probability (exact and
learned) against the DDM's closed-form first-passage distribution, the censored
predictive, and fits that use them (issue 19)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sbi_plugins_ddm.wfpt import decision_probability

from sbi_plugins.data import prepare_data
from sbi_plugins.errors import DataError
from sbi_plugins.likelihoods.distribution import likelihood
from sbi_plugins.likelihoods.lapse import mix
from sbi_plugins.likelihoods.omission import Omissions
from sbi_plugins.plugin.registry import get_simulator
from sbi_plugins.results.predictive import censor
from tests.test_cli import assert_user_error


@pytest.fixture(scope="module")
def ddm():
    return get_simulator("ddm")


@pytest.fixture(scope="module")
def exact(ddm):
    return likelihood(ddm, exact=True)


def exact_omission(v, a, z, t, deadline) -> float:
    """1 - P(either response before the deadline), in closed form."""
    return 1.0 - sum(decision_probability(v, a, z, t, deadline, r) for r in (-1, 1))


BOX_POINTS = [
    # (v, a, z, t, deadline): drifts both ways, narrow and wide boundaries, biased
    # starts, deadlines from the leading edge to the far tail
    (v, a, z, 0.3, 0.3 + excess * a**2)
    for v, a, z, excess in itertools.product(
        (-3.0, -0.5, 0.0, 1.0, 3.0), (0.3, 1.0, 2.5), (0.1, 0.5, 0.9), (0.05, 0.5, 3.0)
    )
]


def frame(rts, responses=None, **columns) -> pd.DataFrame:
    rts = list(rts)
    return pd.DataFrame(
        {
            "rt": rts,
            "response": responses if responses is not None else [1] * len(rts),
            **columns,
        }
    )


# -- the data -------------------------------------------------------------------


def test_nan_and_minus_999_are_omissions_with_a_deadline(ddm):
    data = frame([0.5, np.nan, -999, 0.7], ["1", "none", "0", "-1"])
    prepared = prepare_data(data, ddm, None, deadline=1.2)
    assert prepared.omitted.tolist() == [False, True, True, False]
    assert np.isnan(prepared.x[1:3]).all()  # the omitted rows' response is ignored
    assert prepared.x[[0, 3]].tolist() == [[0.5, 1.0], [0.7, -1.0]]
    assert prepared.deadline.tolist() == [1.2] * 4


def test_a_deadline_column_gives_each_row_its_deadline(ddm):
    data = frame([0.5, -999, 0.9], deadline=[0.8, 0.6, np.nan])
    prepared = prepare_data(data, ddm, None, deadline="deadline")
    assert prepared.omitted.tolist() == [False, True, False]
    assert prepared.deadline.tolist() == [0.8, 0.6, math.inf]


@pytest.mark.parametrize(
    "data,deadline,pattern",
    [
        (frame([0.5, 1.3, 1.2]), 1.2, r"'rt' is at or after its deadline at rows 1, 2"),
        (frame([0.5, -999]), None, r"'rt' is -999 .* at row 1; .*deadline=SECONDS"),
        (frame([0.5, -999], deadline=[1, np.nan]), "deadline", r"row 1 have no dead"),
        (frame([0.5]), "cutoff", r"deadline column 'cutoff' is not in the data"),
        (frame([0.5], deadline=[0.0]), "deadline", r"positive seconds; found 0 at"),
        (frame([0.5]), -1.0, r"positive number of seconds"),
        # milliseconds: the omissions would be impossible, the fit bent to them
        (
            frame([0.5, -999, 1.3]),
            1300,
            r"\(1300\) .* slowest response \(1.3 s\): is it in milliseconds\? "
            r".*deadline=1.3\)",
        ),
        (
            frame([0.5, -999], deadline=[900, 1000]),
            "deadline",
            r"milliseconds\? .*df\['deadline'\] / 1000",
        ),
    ],
)
def test_bad_deadlines_are_refused_naming_rows(ddm, data, deadline, pattern):
    with pytest.raises(DataError, match=pattern):
        prepare_data(data, ddm, None, deadline=deadline)


def test_missing_rt_without_a_deadline_says_how_to_give_one():
    import sbi_plugins

    data = frame([0.5, np.nan, 0.7])
    with pytest.raises(DataError, match=r"'rt' has missing .* row 1; .*--deadline"):
        sbi_plugins.fit(
            data, "ddm", pooling="complete", likelihood="exact", progress=False
        )


def test_cli_refuses_a_response_after_the_deadline(capsys, tmp_path):
    path = tmp_path / "trials.csv"
    frame([0.5, -999, 0.9]).to_csv(path, index=False)
    out = tmp_path / "fit.nc"
    assert_user_error(
        capsys,
        ["fit", "ddm", path, "--deadline", "0.8", "--out", out, "--no-progress"],
        r"'rt' is at or after its deadline at row 2",
    )
    assert_user_error(
        capsys,
        ["fit", "ddm", path, "--out", out, "--no-progress"],
        r"'rt' is -999 .* row 1",
    )
    assert not out.exists()


# -- the omission probability ----------------------------------------------------


def test_quadrature_of_the_exact_density_is_the_closed_form(exact):
    """The exact likelihood's omission probability (Gauss-Legendre over the log
    decision time of Navarro-Fuss' density) against the first-passage
    distribution function's series: equal to 1e-9 across the box (measured:
    1e-11 at 64 nodes)."""
    theta = torch.tensor([p[:4] for p in BOX_POINTS], dtype=torch.float64)
    deadline = torch.tensor([p[4] for p in BOX_POINTS], dtype=torch.float64)
    got = exact.log_omitted(theta, deadline).exp().numpy()
    want = np.array([exact_omission(*p) for p in BOX_POINTS])
    assert np.abs(got - want).max() < 1e-9


def test_the_learned_omission_probability_follows_the_exact_one(ddm, exact):
    """The shipped estimator's omission probability (its flow's exact tail)
    against the closed form over the box, 135 points. Measured: 0.026 at worst
    (deadlines 0.05 a**2 after the onset, on the density's leading edge), 0.017
    at 0.5 a**2, 0.002 at 3 a**2; 0.005 on average. Held to 0.04 and 0.01."""
    neural = likelihood(ddm, progress=False)
    theta = torch.tensor([p[:4] for p in BOX_POINTS], dtype=torch.float64)
    deadline = torch.tensor([p[4] for p in BOX_POINTS], dtype=torch.float64)
    got = neural.log_omitted(theta, deadline).exp().numpy()
    want = np.array([exact_omission(*p) for p in BOX_POINTS])
    assert neural._omission_tail  # the flow's tail, checked against quadrature
    assert np.abs(got - want).max() < 0.04
    assert np.abs(got - want).mean() < 0.01


@pytest.mark.parametrize(
    "broken, reason",
    [
        (lambda scores: scores + 1.0, r"off by up to [0-9.]+ in probability"),
        (lambda scores: 1 / 0, r"it failed with ZeroDivisionError: division by zero"),
    ],
)
def test_a_flow_tail_unlike_the_integrated_density_is_not_used(
    ddm, monkeypatch, broken, reason
):
    """The self-check falls back to quadrature, saying why: a tail whose
    probabilities are e times too large (off by over 0.02), or one that fails."""
    neural = likelihood(ddm, progress=False)
    flow_scores = neural._flow_scores
    monkeypatch.setattr(neural, "_flow_scores", lambda *a: broken(flow_scores(*a)))
    with pytest.warns(
        UserWarning,
        match=r"ddm: the flow's tail does not reproduce the integrated density \("
        + reason
        + r"\); omission probabilities by quadrature \(same numbers, slower\)",
    ):
        assert not neural._uses_flow_tail()


def test_omissions_have_finite_values_and_gradients_everywhere(exact):
    theta = torch.tensor(
        [[1.0, 1.0, 0.5, 0.3]] * 3, dtype=torch.float64, requires_grad=True
    )
    # before the onset (certain omission), at the edge, far in the tail
    deadline = torch.tensor([0.2, 0.3001, 50.0], dtype=torch.float64)
    lp = exact.log_omitted(theta, deadline)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(theta.grad).all()
    assert lp[0] > -1e-9 and lp[2] >= math.log(1e-10)


@pytest.mark.parametrize("kind", ["exact", "neural"])
def test_rows_are_scored_by_density_or_omission_in_their_order(ddm, kind):
    """Decided rows and omissions scored together (for the network: in one pass)
    give each row what it gets alone, in the data's order."""
    lik = likelihood(ddm, exact=kind == "exact", progress=False)
    theta = torch.tensor([[1.0, 1.0, 0.5, 0.3], [0.0, 1.5, 0.4, 0.2]]).double()
    x = torch.tensor([[0.6, 1.0], [np.nan, np.nan], [0.9, -1.0], [np.nan, np.nan]])
    cells = np.array([0, 1, 1, 0])
    omissions = Omissions.of(
        np.array([False, True, False, True]), np.array([1.0, 2.0, 1.0, 1.5]), cells
    )
    index = torch.as_tensor(cells)
    lp = lik.log_prob_grouped(theta, index, x.double(), omissions)
    density = lik.log_prob_grouped(theta, index[[0, 2]], x[[0, 2]].double())
    omitted = lik.log_omitted(theta[[1, 0]], torch.tensor([2.0, 1.5]).double())
    want = torch.stack([density[0], omitted[0], density[1], omitted[1]])
    assert torch.allclose(lp, want, atol=1e-6)


def test_a_lapse_never_explains_an_omission():
    lp = torch.tensor([-1.0, -2.0])
    share = torch.tensor(0.1)
    mixed = mix(lp, -0.5, share, omitted=torch.tensor([False, True]))
    assert mixed[1] == pytest.approx(math.log(0.9) - 2.0)
    both = 0.9 * math.exp(-1.0) + 0.1 * math.exp(-0.5)
    assert mixed[0] == pytest.approx(math.log(both))


# -- the simulator side -------------------------------------------------------------


def test_censored_simulations_omit_at_the_exact_rate(ddm):
    """The simulator censored at the deadline omits as often as the closed form
    says, within 4 binomial standard errors."""
    n, point = 40_000, (0.5, 1.2, 0.5, 0.3, 1.5)
    sims = ddm.simulate(np.tile(point[:4], (n, 1)), np.random.default_rng(3))
    censored = censor(ddm, sims[None], np.full(n, point[4]))[0]
    rate = np.isnan(censored[:, 0]).mean()
    want = exact_omission(*point)
    assert abs(rate - want) < 4 * math.sqrt(want * (1 - want) / n)
    assert np.isnan(censored[np.isnan(censored[:, 0]), 1]).all()


def test_cli_fits_with_a_deadline_and_the_netcdf_keeps_it(capsys, tmp_path, ddm):
    x = ddm.simulate(np.tile([1.0, 0.8, 0.5, 0.3], (40, 1)), np.random.default_rng(0))
    data = pd.DataFrame({"rt": x[:, 0], "response": x[:, 1]})
    data.loc[data.rt >= 1.0, "rt"] = -999  # HSSM's coding
    path, out = tmp_path / "trials.csv", tmp_path / "fit.nc"
    data.to_csv(path, index=False)
    argv = ["fit", "ddm", path, "--deadline", "1.0", "--likelihood", "exact"]
    argv += ["--pooling", "complete", "--draws", "20", "--tune", "20"]
    argv += ["--chains", "1", "--no-progress", "--out", out]
    from sbi_plugins.cli import main

    assert main([str(a) for a in argv]) == 0
    import arviz as az

    fit = az.from_netcdf(out)
    omitted = int((data.rt == -999).sum())
    assert fit.attrs["deadline"] == "1" and int(fit.attrs["omissions"]) == omitted
    assert int(np.isnan(fit.observed_data["rt"].values).sum()) == omitted
    assert np.isfinite(fit.log_likelihood["rt,response"].values).all()
    # the checks read omissions: a rate per condition, plots that do not crash
    import matplotlib.pyplot as plt

    from sbi_plugins import plot
    from sbi_plugins.quantiles import omission_table

    table = omission_table(fit)
    assert table["observed"].tolist() == [omitted / len(data)]
    assert 0 < table["predicted"].iloc[0] < 1
    plot.plot_ppc(fit)
    plot.quantile_probability(fit)
    plt.close("all")
    from sbi_plugins.report import write_report

    page = write_report({"deadline": fit}, tmp_path / "report").read_text()
    assert "without a response by the deadline" in page


# -- fits -------------------------------------------------------------------------

TRUTH = np.array([1.0, 1.0, 0.5, 0.3])


@pytest.fixture(scope="module")
def censored_trials(ddm):
    """800 trials of one DDM, cut at their 80th percentile: 20% omissions."""
    x = ddm.simulate(np.tile(TRUTH, (800, 1)), np.random.default_rng(1))
    deadline = float(np.quantile(x[:, 0], 0.8))
    data = pd.DataFrame({"rt": x[:, 0], "response": x[:, 1]})
    data.loc[data.rt >= deadline, "rt"] = np.nan
    return data, deadline


def fit_exact(data, deadline, **options):
    import sbi_plugins

    return sbi_plugins.fit(
        data,
        "ddm",
        pooling="complete",
        likelihood="exact",
        deadline=deadline,
        draws=300,
        tune=300,
        chains=2,
        seed=2,
        progress=False,
        **options,
    )


def z_scores(fit) -> np.ndarray:
    import arviz as az

    summary = az.summary(fit, var_names=["v", "a", "z", "t"], kind="stats")
    return ((summary["mean"] - TRUTH) / summary["sd"]).to_numpy()


@pytest.mark.slow
def test_a_deadline_fit_recovers_the_truth_and_dropping_omissions_does_not(
    censored_trials,
):
    """With the omissions scored, every posterior mean lies within 2 posterior sd
    of the truth (measured: 0.9 at most); dropping the omitted rows (the slowest
    20%) pulls `a` down and `v` up by more than 5 sd (measured: -8.2 and 6.6)."""
    import arviz as az

    data, deadline = censored_trials
    fit = fit_exact(data, deadline, posterior_predictive=50)
    assert np.abs(z_scores(fit)).max() < 2
    dropped = z_scores(fit_exact(data.dropna(), None, posterior_predictive=False))
    assert dropped[1] < -5 and dropped[0] > 5
    # the predictive omits at the observed rate (binomial sd of one data set: 0.014)
    predicted = np.isnan(fit.posterior_predictive["rt"].values).mean()
    assert abs(predicted - 0.2) < 0.03
    assert np.isnan(fit.posterior_predictive["response"].values).mean() == predicted
    loo = az.loo(fit, pointwise=True)
    assert np.isfinite(loo.elpd_loo) and loo.loo_i.shape == (800,)


def test_angle_learned_omissions_follow_its_simulator():
    """angle has no exact density: its shipped estimator's omission probability
    against the simulator's own censored rate (10,000 trials a point, deadline
    at the simulated 80th percentile). Measured: within 0.02 at 8 random box
    points; held to 0.035 (binomial sd 0.004)."""
    sim = get_simulator("angle")
    neural = likelihood(sim, progress=False)
    rng = np.random.default_rng(0)
    n = 10_000
    for _ in range(4):
        theta = sim.lower + (sim.upper - sim.lower) * rng.uniform(0.1, 0.9, 5)
        x = sim.simulate(np.tile(theta, (n, 1)), rng)
        deadline = float(np.quantile(x[:, 0], 0.8))
        rate = np.isnan(censor(sim, x[None], np.full(n, deadline))[0][:, 0]).mean()
        learned = neural.log_omitted(
            torch.tensor(theta[None]), torch.tensor([deadline])
        ).exp()
        assert abs(float(learned) - rate) < 0.035, (theta, deadline)
