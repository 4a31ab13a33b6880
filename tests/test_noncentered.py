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
from sbi_plugins.inference.nuts_method import laplace_search
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
    ("centered", "pooling", "formulas", "expected"),
    [
        ((), "partial", None, "itself"),
        (("v", "a", "z", "t"), "partial", None, None),
        (("v", "a"), "partial", None, "non-centered"),
        ((), "partial", {"v": "v ~ 1 + C(condition)"}, "itself"),
        (("a", "z", "t"), "partial", {"v": "v ~ 1 + C(condition)"}, "non-centered"),
        ((), "complete", None, None),
        ((), "complete", {"v": "v ~ 1 + C(condition)"}, "itself"),
    ],
)
def test_the_laplace_start_searches_the_mode_with_every_population_non_centered(
    trials, centered, pooling, formulas, expected
):
    """A centered population's joint mode lies at sigma -> 0, a non-centered
    one's does not: beside a non-centered population or a formula, the mode is
    searched with the centered ones non-centered too; models whose populations
    are all centered start from the data."""
    import dataclasses

    sim = sbi_plugins.get_simulator("ddm")
    parameters = plan_model(sim, trials, "participant_id", pooling, formulas)
    parameters = [
        dataclasses.replace(p, centered=True) if p.name in centered else p
        for p in parameters
    ]
    data = prepare_data(trials, sim, "participant_id")
    model, _ = build_model(parameters, data, Likelihood(sim))
    search = laplace_search(model)
    if expected is None:
        assert search is None
    elif expected == "itself":
        assert search is model
    else:
        assert search is not model
        plans = [p for p in search.parameters if isinstance(p, ParameterPlan)]
        assert all(p.noncentered for p in plans if p.pooling == "partial")
        assert model.names == search.names  # the same parameters, other sites


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


def test_the_mode_carried_to_centered_populations_keeps_the_laplace_scales():
    """With `v` and `a` centered beside non-centered `z` and `t`, the Laplace
    start is found non-centered and carried over: every chain starts at finite
    density in the model's own sites, and each carried inverse mass is the
    variance of Gaussian draws pushed through the same change of coordinates
    (here by sampling, not by the Jacobian; at a thousandth of the Laplace
    scales, where the change is linear: at the full scales the non-centered
    Gaussian's curved valley makes a subject's value 7 times as uncertain as
    its data leave it)."""
    import dataclasses

    from pyro.infer.autoguide.initialization import init_to_value
    from pyro.infer.mcmc.util import initialize_model
    from sbi_plugins_ddm import simulate_dataset

    from sbi_plugins.inference import laplace

    sim = sbi_plugins.get_simulator("ddm")
    trials, _ = simulate_dataset(4, 150, seed=0)
    parameters = [
        dataclasses.replace(p, centered=p.name in ("v", "a"))
        for p in plan_model(sim, trials, "participant_id", "partial")
    ]
    data = prepare_data(trials, sim, "participant_id")
    model, kwargs = build_model(parameters, data, Likelihood(sim))
    search = laplace_search(model)
    through = (search, search.with_derived)
    found = laplace.laplace_start(model, kwargs, 3, 0, search.start(), through)
    assert found is not None
    starts, inverse_mass = found
    _, potential, transforms, _ = initialize_model(
        model, model_kwargs=kwargs, init_strategy=init_to_value(values=starts[0])
    )
    assert set(inverse_mass) == set(transforms) == set(starts[0])
    assert {"v", "a", "z_offset", "t_offset"} <= set(transforms)
    for start in starts:
        unconstrained = {n: transforms[n](v) for n, v in start.items()}
        assert torch.isfinite(potential(unconstrained))

    layout, search_transforms, _, mode, hessian = laplace._mode_and_hessian(
        search, kwargs, search.start()
    )
    _, covariance = laplace._laplace_covariance(hessian)
    small = covariance * 1e-6

    def constrained(flat):
        return {
            n: search_transforms[n].inv(v) for n, v in layout.unflatten(flat).items()
        }

    carried = laplace._carried(
        model, kwargs, search.with_derived, constrained, mode, small, [mode]
    )[1]
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(4000, mode.numel(), generator=generator, dtype=f64)
    draws = mode + noise @ torch.linalg.cholesky(small).T
    values = search.complete_draws(
        {n: v.numpy() for n, v in constrained(draws).items()}
    )
    for name in ("v", "a", "v_mu", "a_sigma", "z_offset", "t_mu"):
        sampled = transforms[name](torch.as_tensor(values[name])).var(0)
        # 4,000 draws: a variance's relative Monte Carlo error is 2.2%
        assert torch.allclose(carried[name], sampled, rtol=0.1), name
        # the full scales: the same map, a million times the covariance
        assert torch.allclose(inverse_mass[name], 1e6 * carried[name], rtol=1e-3)
