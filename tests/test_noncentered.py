"""A non-centered normal population is the centered one in other coordinates: the
offsets map onto exactly the truncated density, the log joint differs by the
Jacobian only (the ceilings' weights included), and every result names the group
values as before."""

import numpy as np
import pytest
import torch
from scipy import stats

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.inference.nuts_method import wants_laplace_start
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import make_lapse
from sbi_plugins.model.distributions import (
    normal_population_offset,
    normal_population_value,
)
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.model.pooling import ParameterPlan

f64 = torch.float64

# (mu, sigma, low, high): a wide box, a narrow spread at an edge, a population
# centred far outside the box on either side, a box in one tail
POPULATIONS = [
    (0.0, 1.0, -5.0, 5.0),
    (0.1, 0.01, 0.0, 2.0),
    (-3.0, 0.5, 0.0, 2.0),
    (6.0, 0.4, 0.0, 2.0),
    (0.0, 1.0, 2.5, 4.0),
]


@pytest.fixture(scope="module")
def trials():
    from sbi_plugins_ddm import simulate_dataset

    data, _ = simulate_dataset(3, 30, seed=4)
    data["condition"] = np.tile(["easy", "hard"], len(data) // 2)
    return data


def _t(*values):
    return [torch.tensor(v, dtype=f64) for v in values]


@pytest.mark.parametrize(("mu", "sigma", "low", "high"), POPULATIONS)
def test_offsets_map_onto_the_truncated_normal(mu, sigma, low, high):
    """Standard-normal offsets give the truncated normal's draws (Kolmogorov-
    Smirnov at the 1% level, fixed seed), inside the box; the inverse recovers
    the offsets."""
    mu, sigma, low, high = _t(mu, sigma, low, high)
    offsets = torch.randn(20_000, generator=torch.Generator().manual_seed(0), dtype=f64)
    values = normal_population_value(offsets, mu, sigma, low, high)
    assert bool(((values >= low) & (values <= high)).all())
    a, b = float((low - mu) / sigma), float((high - mu) / sigma)
    truncated = stats.truncnorm(a, b, loc=float(mu), scale=float(sigma))
    result = stats.kstest(values.numpy(), truncated.cdf)
    assert result.statistic < 1.63 / np.sqrt(len(values))
    central = offsets.abs() < 3  # beyond, the box's edge flattens the map
    back = normal_population_offset(values, mu, sigma, low, high)
    np.testing.assert_allclose(back[central], offsets[central], atol=1e-6)


def test_a_wide_box_gives_bambis_non_centered_effect():
    """Far from the box's edges the value is mu + sigma * offset."""
    mu, sigma, low, high = _t(0.3, 0.2, -10.0, 10.0)
    offsets = torch.linspace(-3, 3, 13, dtype=f64)
    values = normal_population_value(offsets, mu, sigma, low, high)
    np.testing.assert_allclose(values, mu + sigma * offsets, atol=1e-9)


def _ddm_model(centered: bool, p_outlier=None):
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(4, 30, seed=3)
    sim = sbi_plugins.get_simulator("ddm")
    prepared = prepare_data(trials, sim, "participant_id")
    parameters = plan_model(
        sim, trials, "participant_id", "partial", noncentered=not centered
    )
    lapse = make_lapse(p_outlier, sim, prepared.x)
    return build_model(parameters, prepared, Likelihood(sim), lapse)


@pytest.mark.parametrize("p_outlier", [None, 0.05])
def test_the_log_joint_is_the_centered_one_times_the_jacobian(p_outlier):
    """log p_nc(mu, sigma, offset) = log p_c(mu, sigma, x(offset)) + log|dx/d
    offset| at random points: the same posterior. Without lapses `t` is sampled
    below each subject's fastest RT, so this checks the ceilings' weights."""
    noncentered, kwargs = _ddm_model(False, p_outlier)
    centered, _ = _ddm_model(True, p_outlier)
    start = noncentered.start()
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        point = {
            k: v + 0.3 * torch.randn(v.shape, generator=generator, dtype=f64)
            if k.endswith("_offset") or k.endswith("_mu")
            else v * (1 + 0.3 * torch.rand((), generator=generator, dtype=f64))
            for k, v in start.items()
        }
        jacobian = 0.0
        for plan in noncentered.parameters:
            offset = point[plan.offset_site].clone().requires_grad_()
            value = plan.derived(
                point | {plan.offset_site: offset}, noncentered.ceilings.get(plan.name)
            )[plan.name]
            (slope,) = torch.autograd.grad(value.sum(), offset)
            jacobian = jacobian + slope.abs().log().sum()
        values = noncentered.with_derived(point)
        expected = centered.log_joint(
            {k: v for k, v in values.items() if not k.endswith("_offset")}, **kwargs
        )
        found = noncentered.log_joint(point, **kwargs)
        assert torch.isfinite(expected)
        np.testing.assert_allclose(float(found), float(expected + jacobian), rtol=1e-9)


def test_every_normal_population_is_non_centered_and_starts_where_centered_does():
    """The DDM's default: all four parameters by subject, each through offsets;
    the start's group values are those the centered model starts from."""
    noncentered, _ = _ddm_model(False)
    centered, _ = _ddm_model(True)
    assert all(p.noncentered for p in noncentered.parameters)
    assert not any(p.noncentered for p in centered.parameters)
    start = noncentered.start()
    assert {f"{n}_offset" for n in "vazt"} <= set(start)
    assert not {"v", "a", "z", "t"} & set(start)
    derived = noncentered.with_derived(start)
    reference = centered.start()
    for name in "vazt":
        np.testing.assert_allclose(derived[name], reference[name], rtol=1e-6)


def test_gamma_populations_stay_centered():
    sim = sbi_plugins.get_simulator("cookie")
    (plan,) = plan_model(sim, None, "location", "partial")
    assert isinstance(plan, ParameterPlan) and plan.family.name == "gamma"
    assert not plan.noncentered


@pytest.mark.parametrize(
    ("noncentered", "pooling", "formulas", "expected"),
    [
        (True, "partial", None, True),
        (False, "partial", None, False),
        (True, "partial", {"v": "v ~ 1 + C(condition)"}, True),
        (False, "partial", {"v": "v ~ 1 + C(condition)"}, False),
        (True, "complete", None, False),
        (True, "complete", {"v": "v ~ 1 + C(condition)"}, True),
    ],
)
def test_the_laplace_start_is_for_models_without_a_centered_population(
    trials, noncentered, pooling, formulas, expected
):
    """A centered population's joint mode lies at sigma -> 0, a non-centered
    one's does not: only models without the former start at the mode."""
    sim = sbi_plugins.get_simulator("ddm")
    parameters = plan_model(
        sim, trials, "participant_id", pooling, formulas, noncentered=noncentered
    )
    data = prepare_data(trials, sim, "participant_id")
    model, _ = build_model(parameters, data, Likelihood(sim))
    assert wants_laplace_start(model) is expected


def test_a_fit_names_the_group_values_and_keeps_them_below_the_fastest_rt():
    """The posterior holds `t` per subject (not the offsets), every draw below
    the subject's fastest RT, and prior draws name the same variables."""
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(3, 40, seed=5)
    idata = sbi_plugins.fit(
        trials,
        "ddm",
        group="participant_id",
        likelihood="exact",
        draws=20,
        tune=20,
        chains=1,
        seed=0,
        progress=False,
        posterior_predictive=False,
        prior_predictive=10,
    )
    posterior = idata.posterior
    assert not any(name.endswith("_offset") for name in posterior.data_vars)
    assert posterior["t"].dims == ("chain", "draw", "participant_id")
    fastest = trials.groupby("participant_id")["rt"].min()
    labels = posterior["t"].participant_id.values
    t = posterior["t"].values.reshape(-1, len(labels))
    assert (t < fastest.loc[labels].to_numpy()).all()
    assert set(idata.prior.data_vars) == set(posterior.data_vars)
