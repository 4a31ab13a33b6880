"""Per-fit local refinement: where it simulates, when it runs and stops, what it
records and caches, and the verdict a likelihood-free fit gets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.errors import EstimatorWarning, SbiPluginsError
from sbi_plugins.estimators import refinement
from sbi_plugins.estimators.refinement import (
    REFINE_FROM_TRIALS,
    Refinement,
    estimator_check,
    local_parameters,
    posterior_shift,
    refinement_parameters,
    refinement_plan,
)

TINY = Refinement(rounds=2, simulations=20_000, epochs=2, learning_rate=3e-4)


def test_local_parameters_spread_each_cell_widen_times_inside_the_box():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 1.0], [2.0, 1.5], [-1.0, 0.5]])
    draws = centres + 0.1 * rng.standard_normal((4, 500, 3, 2))
    lower, upper = np.array([-5.0, 0.0]), np.array([5.0, 1.55])
    theta = local_parameters(draws, lower, upper, 30_000, 2.0, rng)
    assert theta.shape == (30_000, 2)
    by_cell = theta.reshape(-1, 3, 2)
    # parameter 0 is far from its bounds: spread doubled, centred on each cell
    spread = by_cell[..., 0].std(axis=0) / draws[..., 0].std(axis=(0, 1))
    np.testing.assert_allclose(spread, 2.0, rtol=0.05)
    np.testing.assert_allclose(by_cell[..., 0].mean(axis=0), centres[:, 0], atol=0.01)
    # parameter 1 of cell 1 crosses the upper bound: clipped just inside
    assert theta[:, 1].max() < upper[1] and theta[:, 1].min() > lower[1]
    assert (by_cell[:, 1, 1] >= upper[1] - 2e-3).mean() > 0.3


def test_a_replay_share_of_each_round_covers_the_whole_box():
    rng = np.random.default_rng(1)
    draws = np.array([0.5, 0.2]) + 0.01 * rng.standard_normal((2, 200, 4, 2))
    lower, upper = np.array([-1.0, 0.0]), np.array([1.0, 1.0])
    plan = Refinement(simulations=40_000, replay=0.25)
    theta = refinement_parameters(draws, lower, upper, plan, rng)
    assert theta.shape == (40_000, 2)
    near = np.abs(theta - [0.5, 0.2]).max(axis=1) < 0.1
    assert near[:30_000].all()  # the posterior's share, every row near the cells
    assert near[30_000:].mean() < 0.05  # the rest over the box: 2% land near them
    far = theta[30_000:]
    np.testing.assert_allclose(far.mean(axis=0), [0.0, 0.5], atol=0.02)
    np.testing.assert_allclose(far.std(axis=0), [2 / 12**0.5, 1 / 12**0.5], rtol=0.03)
    assert (
        refinement_parameters(
            draws, lower, upper, Refinement(simulations=40_000, replay=0.0), rng
        )
        .std(axis=0)
        .max()
        < 0.1
    )
    with pytest.raises(SbiPluginsError, match="replay is a fraction"):
        Refinement(replay=1.0)


def test_auto_refines_from_the_threshold_and_never_an_exact_fit(tiny_cookie_estimator):
    est = tiny_cookie_estimator
    assert refinement_plan("auto", REFINE_FROM_TRIALS - 1, est) is None
    assert refinement_plan("auto", REFINE_FROM_TRIALS, est) == Refinement()
    assert refinement_plan(True, 10, est) == Refinement()
    assert refinement_plan(2, 10, est) == Refinement(rounds=2)
    assert refinement_plan(False, 10**6, est) is None
    assert refinement_plan(0, 10**6, est) is None
    assert refinement_plan(True, 10**6, None) is None  # exact likelihood
    assert refinement_plan(TINY, 10, est) is TINY
    with pytest.raises(SbiPluginsError, match="refine must be 'auto'"):
        refinement_plan("always", 10, est)
    with pytest.raises(SbiPluginsError, match="rounds >= 1"):
        Refinement(rounds=0)


def test_an_estimator_may_state_its_own_threshold(tiny_cookie_estimator):
    est = tiny_cookie_estimator
    est.metadata["refine_from_trials"] = 100
    try:
        assert refinement_plan("auto", 150, est) == Refinement()
    finally:
        del est.metadata["refine_from_trials"]
    assert refinement_plan("auto", 150, est) is None


def test_posterior_shift_is_in_the_earlier_posteriors_sd():
    rng = np.random.default_rng(1)
    before = {"m": rng.normal(0.0, 2.0, (4, 1000)), "s": rng.normal(0, 1, (4, 1000))}
    after = {"m": before["m"] + 1.0, "s": before["s"].copy()}  # m moves 0.5 sd
    shift = posterior_shift(before, after)
    assert shift["max_shift_sd"] == pytest.approx(0.5, abs=0.02)
    assert shift["worst"] == "m"
    # less what two means' Monte Carlo error explains (about 2 x sqrt(2/4000))
    assert 0.5 - 0.08 < shift["max_beyond_noise_sd"] < 0.5 - 0.03
    assert posterior_shift(before, before)["max_shift_sd"] == 0.0


class _FakeFit:
    def __init__(self, centre: float, draws: int = 1000) -> None:
        rng = np.random.default_rng(int(centre * 1000) % 2**32)
        self.draws = {"m": centre + rng.standard_normal((4, draws))}


def _fake_refine(simulator, estimator, theta, plan, seed, **_):
    """Refinement that costs 1 + 2 s and changes nothing: the refits decide."""
    return estimator, {
        "num_simulations": plan.simulations,
        "simulation_seconds": 1.0,
        "training_seconds": 2.0,
    }


@pytest.mark.parametrize(
    ("centres", "rounds", "converged"),
    [
        ([0.6, 0.65], 2, True),  # round 1 moves 0.6 sd, round 2 only 0.05
        ([0.6, 1.2, 1.8], 3, False),  # still moving when the rounds run out
        ([0.05], 1, True),  # the amortized estimator was fine
    ],
)
def test_refinement_stops_when_the_posterior_stops_moving(
    monkeypatch, centres, rounds, converged
):
    monkeypatch.setattr(refinement, "refine_estimator", _fake_refine)
    fits = iter(_FakeFit(c) for c in centres)
    _, last, record = refinement.refine_and_refit(
        None,
        None,
        _FakeFit(0.0),
        lambda estimator: next(fits),
        lambda fit: None,
        lambda fit: fit.draws,
        Refinement(rounds=3),
        seed=0,
    )
    assert len(record["rounds"]) == rounds
    assert record["converged"] is converged
    assert last.draws["m"].mean() == pytest.approx(centres[rounds - 1], abs=0.05)
    assert record["simulations"] == rounds * Refinement().simulations
    assert record["seconds"] == 3.0 * rounds
    check = estimator_check(record, exact=False, num_rows=10**4, estimator=None)
    assert check["verdict"] == ("passed" if converged else "flagged")


def test_too_few_draws_to_tell_stop_and_flag_the_fit(monkeypatch):
    monkeypatch.setattr(refinement, "refine_estimator", _fake_refine)
    # 4 x 10 draws: a mean's Monte Carlo error alone is about 0.16 sd
    _, _, record = refinement.refine_and_refit(
        None,
        None,
        _FakeFit(0.0, draws=10),
        lambda estimator: _FakeFit(0.01, draws=10),
        lambda fit: None,
        lambda fit: fit.draws,
        Refinement(rounds=3),
        seed=0,
    )
    assert len(record["rounds"]) == 1 and not record["converged"]
    check = estimator_check(record, exact=False, num_rows=10**4, estimator=None)
    assert check["verdict"] == "flagged"
    assert "too few effective draws to tell" in check["message"]


def test_verdicts_without_refinement():
    small = estimator_check(None, exact=False, num_rows=500, estimator=None)
    large = estimator_check(None, exact=False, num_rows=6000, estimator=None)
    exact = estimator_check(None, exact=True, num_rows=6000, estimator=None)
    assert small["verdict"] == "small data"
    assert large["verdict"] == "flagged" and "refine=True" in large["message"]
    assert exact["verdict"] == "exact"
    with pytest.warns(EstimatorWarning, match="not refined at 6000 rows"):
        refinement.warn_if_flagged(large)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refinement.warn_if_flagged(small)


def _cookie_fit(data, estimator, refine, seed=1):
    return sbi_plugins.fit(
        data,
        "cookie",
        group="location",
        estimator=estimator,
        draws=150,
        tune=150,
        chains=2,
        seed=seed,
        progress=False,
        posterior_predictive=False,
        refine=refine,
    )


def test_a_refined_fit_records_its_rounds_and_a_rerun_reuses_the_cache(
    cookie_data, tiny_cookie_estimator, monkeypatch
):
    before = tiny_cookie_estimator.checksum
    idata = _cookie_fit(cookie_data, tiny_cookie_estimator, TINY)
    attrs = idata.posterior.attrs
    record = json.loads(attrs["refinement"])
    check = json.loads(attrs["estimator_check"])
    assert 1 <= len(record["rounds"]) <= 2
    assert record["simulations"] == 20_000 * len(record["rounds"])
    assert check["verdict"] in ("passed", "flagged")
    assert attrs["estimator_checksum"] != before  # the fit used the refined copy
    assert tiny_cookie_estimator.checksum == before  # the original is untouched
    refined = sbi_plugins.load_estimator(attrs["estimator_source"])
    assert refined.checksum == attrs["estimator_checksum"]
    assert refined.metadata["refined_from"] == before

    def no_training(*args, **kwargs):
        raise AssertionError("a cached refinement was trained again")

    monkeypatch.setattr(refinement, "refine_estimator", no_training)
    again = _cookie_fit(cookie_data, tiny_cookie_estimator, TINY, seed=2)
    assert again.posterior.attrs["estimator_checksum"] == attrs["estimator_checksum"]
    assert (
        "reused from the cache"
        in json.loads(again.posterior.attrs["estimator_check"])["message"]
    )
    # another model of the same data is refined at its own posterior
    with pytest.raises(AssertionError, match="trained again"):
        sbi_plugins.fit(
            cookie_data,
            "cookie",
            group="location",
            pooling="none",
            estimator=tiny_cookie_estimator,
            draws=50,
            tune=50,
            chains=1,
            progress=False,
            posterior_predictive=False,
            refine=TINY,
        )


def test_a_small_default_fit_is_not_refined_and_says_so(
    cookie_data, tiny_cookie_estimator
):
    idata = _cookie_fit(cookie_data, tiny_cookie_estimator, "auto")
    assert idata.posterior.attrs["refinement"] == ""
    check = json.loads(idata.posterior.attrs["estimator_check"])
    assert check["verdict"] == "small data"


def test_a_large_unrefined_fit_is_flagged(cookie_data, tiny_cookie_estimator):
    many = cookie_data.sample(REFINE_FROM_TRIALS, replace=True, random_state=0)
    with pytest.warns(EstimatorWarning, match="refine=True"):
        idata = _cookie_fit(many.reset_index(drop=True), tiny_cookie_estimator, False)
    assert json.loads(idata.posterior.attrs["estimator_check"])["verdict"] == "flagged"


@pytest.mark.slow
def test_refinement_closes_the_gap_that_data_size_opens_and_its_shift_says_so():
    """DDM 20 x 150 (3,000 trials), v and a by subject, z and t pooled: the shipped
    estimator's pooled z sits about 0.4 exact sd off, one refinement round brings
    every mean within 0.3 sd (beyond the means' Monte Carlo error), and the round's
    shift, all a likelihood-free fit would have, is about the gap it closed."""
    import arviz as az
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(20, 150, seed=0)
    pooling = {"v": "partial", "a": "partial", "z": "complete", "t": "complete"}
    settings = dict(
        group="participant_id",
        pooling=pooling,
        draws=400,
        tune=400,
        chains=4,
        seed=2025,
        progress=False,
        posterior_predictive=False,
        compile=True,  # as a default fit of 4 x (1000 + 1000) is: 3,000 rows pay
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = sbi_plugins.fit(trials, "ddm", likelihood="exact", **settings)
        amortized = sbi_plugins.fit(trials, "ddm", refine=False, **settings)
        refined = sbi_plugins.fit(trials, "ddm", refine=1, **settings)
    names = list(exact.posterior.data_vars)
    truth = az.summary(exact, var_names=names, round_to="none")

    def gaps(fit):
        s = az.summary(fit, var_names=names, round_to="none")
        noise = 2 * np.sqrt(s["mcse_mean"] ** 2 + truth["mcse_mean"] ** 2)
        return (s["mean"] - truth["mean"]).abs() / truth["sd"], noise / truth["sd"]

    before, noise_before = gaps(amortized)
    after, noise_after = gaps(refined)
    assert (before - noise_before).max() > 0.3, before.sort_values().tail(3)
    assert (after - noise_after).max() < 0.3, after.sort_values().tail(3)
    assert after.max() < before.max() - 0.1
    ratio = az.summary(refined, var_names=names)["sd"] / truth["sd"]
    assert ratio.between(0.8, 1.25).all(), ratio
    shift = json.loads(refined.posterior.attrs["refinement"])["rounds"][0]
    assert abs(shift["max_shift_sd"] - before.max()) < 0.25, (shift, before.max())
    verdicts = [
        json.loads(f.posterior.attrs["estimator_check"])["verdict"]
        for f in (amortized, refined)
    ]
    assert verdicts[0] == "flagged"
