"""The DDM plugin: simulator, data checks, learned likelihood and hierarchical fits."""

import itertools
import math
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats

import sbi_plugins
from sbi_plugins.cli import main
from sbi_plugins.data import prepare_data

pytest.importorskip("cssm")

from sbi_plugins_ddm import simulate_dataset
from sbi_plugins_ddm.wfpt import ddm_log_likelihood


@pytest.fixture(scope="module")
def ddm():
    return sbi_plugins.get_simulator("ddm")


def exact_density(rt, theta, response):
    x = torch.tensor([[rt, response]], dtype=torch.float64)
    return math.exp(
        ddm_log_likelihood(torch.tensor(theta, dtype=torch.float64), x).item()
    )


@pytest.mark.parametrize(
    "theta", [(0.8, 0.7, 0.4, 0.3), (-1.5, 1.2, 0.6, 0.5), (2.0, 0.35, 0.3, 0.2)]
)
def test_simulator_follows_the_exact_density(ddm, theta):
    """Choice probability within 4 binomial sd and RT deciles per response by chi-square
    (p > 0.001) against the analytic density: the boundary correction for the time
    step works, without it a = 0.35 is off by 5%."""
    n = 20_000
    x = ddm.simulate(np.tile(theta, (n, 1)), np.random.default_rng(7))
    upper = x[:, 1] == 1
    p_upper = integrate.quad(
        exact_density, theta[3], np.inf, args=(theta, 1.0), limit=200
    )[0]
    assert abs(upper.mean() - p_upper) < 4 * math.sqrt(p_upper * (1 - p_upper) / n)
    for code, mask in ((1.0, upper), (-1.0, ~upper)):
        rts = x[mask, 0]
        edges = np.quantile(rts, np.linspace(0, 1, 11))
        edges[0], edges[-1] = theta[3], np.inf
        expected = np.array(
            [
                integrate.quad(exact_density, lo, hi, args=(theta, code), limit=200)[0]
                for lo, hi in itertools.pairwise(edges)
            ]
        )
        observed = np.histogram(rts, edges)[0]
        chi2 = ((observed - n * expected) ** 2 / (n * expected)).sum()
        assert stats.chi2(len(observed) - 1).sf(chi2) > 1e-3, (code, chi2)


def test_simulate_is_deterministic_under_a_seed(ddm):
    theta = ddm.sample_training_prior(50, np.random.default_rng(0))
    a = ddm.simulate(theta, np.random.default_rng(3))
    b = ddm.simulate(theta, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a[:, 1])) <= {-1.0, 1.0}


def test_zero_one_responses_become_minus_one_one(ddm):
    df = pd.DataFrame({"rt": [0.5, 0.7, 0.6], "response": [0, 1, 0], "s": [1, 1, 2]})
    prepared = prepare_data(df, ddm, "s")
    assert list(prepared.x[:, 1]) == [-1.0, 1.0, -1.0]
    hssm = prepare_data(df.assign(response=[-1, 1, -1]), ddm, "s")
    np.testing.assert_array_equal(prepared.x, hssm.x)


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (
            lambda d: d.assign(rt=d["rt"].where(d.index != 4, 0.0)),
            r"'rt' must lie in \(0, inf\).*row 4",
        ),
        (
            lambda d: d.assign(rt=d["rt"].where(d.index != 2, -0.3)),
            r"'rt' must lie in \(0, inf\).*row 2",
        ),
        (
            lambda d: d.assign(rt=d["rt"].where(d.index != 6, np.nan)),
            r"'rt' has missing or non-finite.*row 6",
        ),
        (
            lambda d: d.assign(response=d["response"].where(d.index != 3, 2)),
            r"'response' accepts codes -1, 1.*row 3",
        ),
        (
            lambda d: d.assign(response=d["response"].where(d.index != 5, 0)),
            r"'response' accepts codes -1, 1.*row 5",
        ),
        (
            lambda d: d.assign(rt=d["rt"].where(d.index != 7, 500.0)),
            r"'rt': values at row 7 lie outside",
        ),
        (
            lambda d: d.drop(columns="participant_id"),
            r"group column 'participant_id' is not in the data",
        ),
    ],
)
def test_bad_ddm_data_gets_one_line_naming_rows(capsys, tmp_path, edit, pattern):
    trials, _ = simulate_dataset(2, 5, seed=1)
    trials["response"] = trials["response"].where(trials.index % 2 == 0, -1)
    trials.loc[trials.index % 2 == 0, "response"] = 1
    path = tmp_path / "bad.csv"
    edit(trials).to_csv(path, index=False)
    out = tmp_path / "fit.nc"
    code = main(
        [
            "fit",
            "ddm",
            str(path),
            "--group",
            "participant_id",
            "--out",
            str(out),
            "--draws",
            "5",
            "--tune",
            "5",
            "--chains",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert pytest.importorskip("re").search(pattern, err), err


def test_shipped_estimator_is_small_and_documented(ddm):
    from sbi_plugins.estimators.resolve import shipped_estimator

    est = shipped_estimator(ddm)
    assert est is not None and est.kind == "mnle"
    assert __import__("os").path.getsize(est.source) < 5_000_000
    training = est.metadata["training"]
    assert training["num_simulations"] >= 100_000
    for key in ("epochs", "best_validation_loss"):
        assert key in training
    assert est.metadata["recipe"]["seed"] is not None


def test_learned_log_density_is_close_to_the_exact_one(ddm):
    """Held-out simulations from the centre of the box: mean absolute error of the
    learned log-density under 0.1 nats (the benchmark prints the full-box figure)."""
    rng = np.random.default_rng(99)
    mid = (ddm.lower + ddm.upper) / 2
    half = (ddm.upper - ddm.lower) / 4
    theta = rng.uniform(mid - half, mid + half, size=(4000, 4))
    x = ddm.simulate(theta, rng)
    keep = np.isfinite(x).all(1)
    t, xx = torch.tensor(theta[keep]), torch.tensor(x[keep])
    neural = sbi_plugins.likelihood(ddm, progress=False)
    exact = sbi_plugins.likelihood(ddm, exact=True)
    with torch.no_grad():
        error = (neural.log_prob(t, xx) - exact.log_prob(t, xx)).numpy()
    assert np.abs(error).mean() < 0.1, np.abs(error).mean()
    assert abs(error.mean()) < 0.05


# -- hierarchical fits -------------------------------------------------------------

POOLING = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}
SAMPLER = {"draws": 400, "tune": 400, "chains": 2, "seed": 5, "progress": False}


@pytest.fixture(scope="module")
def recovery():
    trials, truth = simulate_dataset(10, 100, seed=0)
    fit = sbi_plugins.fit(
        trials, "ddm", group="participant_id", pooling=POOLING, **SAMPLER
    )
    return trials, truth, fit


@pytest.mark.slow
def test_recovers_population_and_subjects(recovery):
    """10 subjects x 100 trials: v_mu and a_mu inside their 94% HDIs of the truth
    generating population means, subjects' posterior means correlate with truth."""
    _, truth, fit = recovery
    hdi = az.hdi(fit, var_names=["v_mu", "a_mu"], hdi_prob=0.94)
    for name, population_mean in (("v_mu", 0.8), ("a_mu", 1.0)):
        low, high = hdi[name].values
        assert low <= population_mean <= high, (name, low, high)
    for name in ("v", "a"):
        estimate = fit.posterior[name].mean(("chain", "draw")).values
        assert np.corrcoef(estimate, truth[name].to_numpy())[0, 1] > 0.7, name
    assert abs(float(fit.posterior["t"].mean()) - 0.3) < 4 * float(
        fit.posterior["t"].std()
    )


@pytest.mark.slow
def test_inference_data_for_trials(recovery):
    trials, _, fit = recovery
    assert list(fit.log_likelihood.data_vars) == ["rt,response"]
    assert fit.log_likelihood["rt,response"].shape[-1] == len(trials)
    pp = fit.posterior_predictive
    assert set(pp.data_vars) == {"rt", "response"}
    assert set(np.unique(pp["response"].values)) <= {-1.0, 1.0}
    assert (pp["rt"].values > 0).all()
    assert fit.posterior["v"].dims[-1] == "participant_id"


@pytest.mark.slow
def test_loo_comparison_of_drift_pooling(recovery):
    trials, _, fit = recovery
    single = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        pooling={**POOLING, "v": "complete"},
        **SAMPLER,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sbi_plugins.compare({"v partial": fit, "v complete": single})
    assert set(table.index) == {"v partial", "v complete"}
    assert table.index[0] == "v partial", table


@pytest.fixture(scope="module")
def small_study_summaries():
    """A cheaper version of the benchmark: 5 subjects x 100 trials, v and a
    partial, the same model fitted with the neural and the exact likelihood."""
    trials, _ = simulate_dataset(5, 100, seed=3)
    common = {"group": "participant_id", "pooling": POOLING, **SAMPLER, "draws": 500}
    neural = sbi_plugins.fit(trials, "ddm", **common)
    exact = sbi_plugins.fit(trials, "ddm", likelihood="exact", **common)
    names = ["v", "a", "v_mu", "a_mu", "z", "t"]
    return (
        az.summary(neural, var_names=names, round_to="none"),
        az.summary(exact, var_names=names, round_to="none"),
    )


@pytest.mark.slow
def test_neural_agrees_with_exact_on_a_small_study(small_study_summaries):
    """Posterior means within 0.3 exact posterior sd and sds within 25%, pooled z
    and t included. Each mean carries Monte Carlo error (about 0.05 sd at these
    draws), and a chaotic sampler turns any change in the last bits of the
    likelihood into other draws; so a gap fails only when it exceeds 0.3 sd by more
    than two standard errors of the difference."""
    a, b = small_study_summaries
    gap = (a["mean"] - b["mean"]).abs() / b["sd"]
    noise = (a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2) ** 0.5 / b["sd"]
    excess = gap - 0.3 - 2 * noise
    assert (excess < 0).all(), {"gap": gap.to_dict(), "noise": noise.to_dict()}
    ratio = a["sd"] / b["sd"]
    assert ((ratio - 1).abs() < 0.25).all(), ratio.to_dict()


TINY_TRAINING = {
    "num_simulations": 3000,
    "hidden_features": 16,
    "num_transforms": 1,
    "max_num_epochs": 2,
    "seed": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def plain_tiny(ddm):
    from sbi_plugins.estimators.training import train

    return train(ddm, **TINY_TRAINING, options={"log_transform_x": True})


@pytest.mark.parametrize(
    "stage, epochs, trained, kept",
    [
        ("choice", 3, "discrete_net", "continuous_net"),
        ("flow", 10, "continuous_net", "discrete_net"),
    ],
)
def test_refinement_stage_trains_only_its_part(
    ddm, plain_tiny, stage, epochs, trained, kept
):
    """A recipe's extra stage lowers its part's held-out loss, leaves the other part
    as the joint training made it (still trainable), and is recorded in the
    metadata but not in the network's shape."""
    from sbi_plugins.estimators.training import train

    options = {
        "log_transform_x": True,
        f"{stage}_simulations": 40_000,
        f"{stage}_epochs": epochs,
    }
    refined = train(ddm, **TINY_TRAINING, options=options)
    report = refined.metadata["training"][f"{stage}_refinement"]
    assert report["validation_loss_after"] < report["validation_loss_before"] - 0.01
    assert f"{stage}_simulations" not in refined.metadata["network"]
    before = getattr(plain_tiny.net, kept).state_dict()
    for name, value in getattr(refined.net, kept).state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    before = getattr(plain_tiny.net, trained).state_dict()
    assert any(
        not torch.equal(value, before[name])
        for name, value in getattr(refined.net, trained).state_dict().items()
    )
    assert all(p.requires_grad for p in getattr(refined.net, kept).parameters())


def test_per_group_mnle_scoring_equals_sbi_row_by_row(ddm):
    """The per-group MNLE path gives sbi's numbers and gradients, with leading draw
    dimensions, for both choices, and -inf where an RT does not exceed t."""
    lik = sbi_plugins.likelihood(ddm, progress=False)
    rng = np.random.default_rng(4)
    theta = torch.tensor(
        rng.uniform(ddm.lower, ddm.upper, size=(3, 6, 4)), requires_grad=True
    )
    index = torch.tensor(rng.integers(0, 6, size=120))
    x = torch.tensor(ddm.simulate(theta[0, index].detach().numpy(), rng))
    x[:5, 0] = theta[1, index[:5], 3].detach() * 0.5  # faster than t in draw 1
    grouped = lik.log_prob_grouped(theta, index, x)
    by_row = lik.log_prob(theta[:, index, :], x)
    assert set(x[:, 1].tolist()) == {-1.0, 1.0}
    assert torch.isinf(by_row[1, :5]).all() and torch.isinf(grouped[1, :5]).all()
    finite = torch.isfinite(by_row)
    assert finite.sum() > 200
    assert torch.equal(torch.isfinite(grouped), finite)
    torch.testing.assert_close(grouped[finite], by_row[finite], rtol=1e-4, atol=1e-4)
    (g_fast,) = torch.autograd.grad(grouped[finite].sum(), theta)
    (g_row,) = torch.autograd.grad(by_row[finite].sum(), theta)
    torch.testing.assert_close(g_fast, g_row, rtol=1e-3, atol=1e-3)
