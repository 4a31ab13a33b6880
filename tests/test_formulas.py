"""Per-parameter formulas: parsing, names, the box link, cells, shorthand, fits."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import sbi_plugins
from sbi_plugins.likelihoods.distribution import likelihood
from sbi_plugins.model.formula_fit import plan_from_arguments
from sbi_plugins.model.formulas import (
    FormulaError,
    FormulaModel,
    inverse_link,
    link,
    named_posterior,
)
from sbi_plugins.model.pooling import HierarchicalModel, plan_parameters

SITE = "rt,response"
TRUE_EFFECT = -0.5
"""The condition effect on v's link scale used by the synthetic data."""


@pytest.fixture(scope="module")
def ddm():
    return sbi_plugins.get_simulator("ddm")


def ddm_design(
    ddm,
    subjects: int,
    trials: int,
    effect: float,
    seed: int,
    v0: float = 0.4,
    sd: float = 0.3,
) -> pd.DataFrame:
    """Trials from the formula model itself: v = link(v0 + effect*hard + u_s), with
    u_s ~ Normal(0, sd); a, z, t common (1.0, 0.5, 0.3)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, sd, subjects)
    frames = []
    for s in range(subjects):
        for condition, shift in (("easy", 0.0), ("hard", effect)):
            v = float(link(torch.tensor(v0 + shift + u[s]), -3.0, 3.0))
            x = ddm.simulate(np.tile([v, 1.0, 0.5, 0.3], (trials, 1)), rng)
            frames.append(
                pd.DataFrame(
                    {
                        "participant_id": f"s{s:02d}",
                        "condition": condition,
                        "difficulty": 1.0 if condition == "hard" else 0.0,
                        "rt": x[:, 0],
                        "response": x[:, 1].astype(int),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def small(ddm):
    return ddm_design(ddm, subjects=4, trials=15, effect=TRUE_EFFECT, seed=0)


def plan(ddm, frame, formulas, pooling="complete", group="participant_id"):
    return plan_from_arguments(frame, ddm, formulas, pooling, group, None)


def test_parse_names_terms_and_cells(ddm, small):
    p = plan(
        ddm,
        small,
        {"v": "v ~ 1 + C(condition) + (1 + difficulty | participant_id)"},
        pooling={"a": "partial", "z": "complete", "t": "none"},
    )
    v, a, z, t = p.formulas
    assert [term.name for term in v.common] == ["Intercept", "C(condition)"]
    assert v.common[1].levels == ["hard"]
    assert [term.name for term in v.group] == [
        "1|participant_id",
        "difficulty|participant_id",
    ]
    assert v.group[0].groups == sorted(small["participant_id"].unique())
    # the shorthand, translated: partial -> random intercepts, none -> per group
    assert a.formula == "a ~ 1 + (1|participant_id)"
    assert z.formula == "z ~ 1"
    assert t.formula == "t ~ 0 + C(participant_id)" and t.common[0].size == 4
    # cells are the unique design rows: subjects x conditions here
    assert p.num_cells == 4 * 2
    cell_of = pd.Series(p.cell_index).groupby(
        [small["participant_id"], small["condition"]]
    )
    assert (cell_of.nunique() == 1).all() and cell_of.first().nunique() == 8


def test_numeric_predictor_and_intercept_prior(ddm, small):
    frame = small.assign(x=np.linspace(-1, 1, len(small)))
    p = plan(ddm, frame, ["v ~ 1 + x", "a ~ 1"])
    v, a = p.formulas[:2]
    assert p.num_cells == len(frame)  # every row its own cell
    # intercept prior centred on the plugin's typical a (1.2 in [0.3, 2.5])
    center = float(link(torch.tensor(a.common[0].loc[0]), 0.3, 2.5))
    assert center == pytest.approx(1.2)
    # a slope's prior sd is one link unit per sd of its predictor
    assert v.common[1].scale[0] == pytest.approx(1 / frame["x"].std(ddof=0))


@pytest.mark.parametrize(
    ("formulas", "pattern"),
    [
        ({"v": "v ~ 1 + nosuch"}, r"uses column\(s\) 'nosuch' that the data lack"),
        ({"q": "q ~ 1"}, r"'q', which ddm does not have; its parameters are v, a"),
        ({"v": "1 + difficulty"}, None),  # a key and a right-hand side is fine
        ({"v": "a ~ 1"}, r"formulas\['v'\] is 'a ~ 1', a formula for 'a'"),
        (["v ~ 1", "v ~ 1 + difficulty"], r"two formulas for 'v'"),
        (["v = 1 + difficulty"], r"cannot read formula 'v = 1 \+ difficulty'"),
        ({"v": "v ~ 1 + (1|"}, r"cannot parse the formula for 'v'"),
    ],
)
def test_bad_formulas_name_the_problem(ddm, small, formulas, pattern):
    if pattern is None:
        assert plan(ddm, small, formulas).formulas[0].formula == "v ~ 1 + difficulty"
        return
    with pytest.raises(FormulaError, match=pattern) as info:
        plan(ddm, small, formulas)
    assert "\n" not in str(info.value)


def test_empty_predictor_values_are_named(ddm, small):
    frame = small.copy()
    frame.loc[[3, 7], "difficulty"] = np.nan
    with pytest.raises(FormulaError, match=r"column 'difficulty'.*empty at rows 3, 7"):
        plan(ddm, frame, {"v": "v ~ difficulty"})


def test_link_keeps_every_parameter_in_the_box(ddm, small):
    """Whatever the coefficients, even absurd ones, trial-wise parameters stay in
    the training box (the bounds themselves at most)."""
    p = plan(ddm, small, {"v": "v ~ 1 + difficulty + (1 + difficulty|participant_id)"})
    model = FormulaModel(p)
    trace = pyro.poutine.trace(model.cell_parameters).get_trace()
    low = torch.tensor(ddm.lower, dtype=torch.float64)
    high = torch.tensor(ddm.upper, dtype=torch.float64)
    for scale in (0.0, 1.0, 30.0, 1e4, -1e4):
        values = {
            name: torch.full_like(site["value"], scale) * (1 + 0.1 * i)
            for i, (name, site) in enumerate(trace.nodes.items())
            if site["type"] == "sample"
        }
        theta = pyro.poutine.condition(model.cell_parameters, values)()
        assert theta.shape == (p.num_cells, 4)
        assert torch.isfinite(theta).all()
        assert ((theta >= low) & (theta <= high)).all(), scale
    # and the link is the scaled logistic, inverted by inverse_link
    eta = np.array([-3.0, 0.0, 2.5])
    back = inverse_link(link(torch.tensor(eta), -3.0, 3.0).numpy(), -3.0, 3.0)
    np.testing.assert_allclose(back, eta, atol=1e-12)


def _log_density(model_fn, values, **kwargs) -> torch.Tensor:
    conditioned = pyro.poutine.condition(model_fn, values)
    return pyro.poutine.trace(conditioned).get_trace(**kwargs).log_prob_sum()


def _random_values(model_fn, seed, **kwargs) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(seed)
    trace = pyro.poutine.trace(model_fn).get_trace(**kwargs)
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and site["value"].is_floating_point()
    }


def test_cells_score_as_row_by_row(ddm, small):
    """Scoring once per cell through the grouped fast path gives the numbers of
    scoring every row at its own parameters, for the neural and exact likelihood."""
    p = plan(ddm, small, {"v": "v ~ 1 + C(condition) + (1|participant_id)"})
    model = FormulaModel(p)
    x = torch.as_tensor(small[["rt", "response"]].to_numpy(float))
    index = torch.as_tensor(p.cell_index)
    for lik in (likelihood("ddm", progress=False), likelihood("ddm", exact=True)):
        values = _random_values(model.cell_parameters, 0)
        # pull the intercepts towards typical values so every row has a finite score
        values["t_Intercept"] = torch.tensor([-2.0], dtype=torch.float64)
        theta = pyro.poutine.condition(model.cell_parameters, values)()
        per_cell = lik.rows(theta, index).log_prob(x)
        per_row = lik.log_prob(theta[index], x)
        assert torch.isfinite(per_row).all()
        torch.testing.assert_close(per_cell, per_row, rtol=1e-4, atol=1e-4)
        if not lik.exact:
            assert lik._grouped is not None  # the fast path was in use


def test_shorthand_is_its_formula(ddm, small):
    """pooling {"v": "partial", "a": "none"} gives the very model of the formulas
    `v ~ 1 + (1|participant_id)`, `a ~ 0 + C(participant_id)`: same sites, same log
    density at the same values."""
    pooling = {"v": "partial", "a": "none", "z": "complete", "t": "complete"}
    shorthand = FormulaModel(plan(ddm, small, {"z": "z ~ 1"}, pooling=pooling))
    formulas = {
        "v": "v ~ 1 + (1|participant_id)",
        "a": "a ~ 0 + C(participant_id)",
        "z": "z ~ 1",
        "t": "t ~ 1",
    }
    explicit = FormulaModel(plan(ddm, small, formulas, pooling="complete"))
    kwargs = {
        "x": torch.as_tensor(small[["rt", "response"]].to_numpy(float)),
        "likelihood": likelihood("ddm", exact=True),
        "site": SITE,
    }
    a_kwargs = {**kwargs, "cell_index": torch.as_tensor(shorthand.plan.cell_index)}
    b_kwargs = {**kwargs, "cell_index": torch.as_tensor(explicit.plan.cell_index)}
    for seed in range(3):
        values = _random_values(shorthand, seed, **a_kwargs)
        values["t_Intercept"] = torch.tensor([-2.0], dtype=torch.float64)
        lp_a = _log_density(shorthand, values, **a_kwargs)
        lp_b = _log_density(explicit, values, **b_kwargs)
        assert torch.isfinite(lp_a)
        assert lp_a.item() == pytest.approx(lp_b.item(), rel=1e-12)


def test_formula_and_pooling_models_share_the_likelihood(ddm, small):
    """The same subject values, reached through `v ~ 1 + (1|participant_id)`
    (intercept + offsets through the link) and through the pooling model's
    per-group values, score the data identically: the two parametrizations differ
    only in their priors."""
    v_g = torch.tensor([0.3, -0.8, 1.7, 0.9], dtype=torch.float64)
    pooled = {"a": 1.1, "z": 0.45, "t": 0.25}
    x = torch.as_tensor(small[["rt", "response"]].to_numpy(float))
    lik = likelihood("ddm", exact=True)
    pooling = {"v": "partial", "a": "complete", "z": "complete", "t": "complete"}
    plans = plan_parameters(ddm, pooling)
    old = HierarchicalModel(plans, 4, "participant_id")
    group_index = torch.as_tensor(pd.factorize(small["participant_id"], sort=True)[0])
    old_values = {
        "v_mu": torch.tensor(0.5),
        "v_sigma": torch.tensor(1.0),
        "v": v_g,
        **{k: torch.tensor(v, dtype=torch.float64) for k, v in pooled.items()},
    }
    old_trace = pyro.poutine.trace(pyro.poutine.condition(old, old_values)).get_trace(
        x=x, group_index=group_index, likelihood=lik, site=SITE
    )
    new_plan = plan(ddm, small, {}, pooling=pooling)
    eta = inverse_link(v_g.numpy(), -3.0, 3.0)
    intercept, sigma = 0.2, 0.7
    new_values = {
        "v_Intercept": torch.tensor([intercept], dtype=torch.float64),
        "v_1|participant_id_sigma": torch.tensor([sigma], dtype=torch.float64),
        "v_1|participant_id_offset": torch.tensor((eta - intercept) / sigma)[:, None],
    }
    for name, value in pooled.items():
        p = ddm.parameters[ddm.parameter_names.index(name)]
        new_values[f"{name}_Intercept"] = torch.tensor(
            [inverse_link(value, p.lower, p.upper)], dtype=torch.float64
        )
    new_trace = pyro.poutine.trace(
        pyro.poutine.condition(FormulaModel(new_plan), new_values)
    ).get_trace(
        x=x,
        cell_index=torch.as_tensor(new_plan.cell_index),
        likelihood=lik,
        site=SITE,
    )
    old_lp = old_trace.nodes[SITE]["fn"].log_prob(x)
    new_lp = new_trace.nodes[SITE]["fn"].log_prob(x)
    assert torch.isfinite(old_lp).all()
    torch.testing.assert_close(new_lp, old_lp, rtol=1e-9, atol=1e-9)


def test_named_posterior_shapes_and_dims(ddm, small):
    frame = small.assign(
        block=np.tile(["b1", "b2", "b3"], len(small) // 3 + 1)[: len(small)]
    )
    p = plan(
        ddm,
        frame,
        {"v": "difficulty + C(block) + (1|participant_id) + (C(block)|participant_id)"},
    )
    model = FormulaModel(p)
    draws = [_random_values(model.cell_parameters, s) for s in range(6)]
    raw = {
        k: np.stack([d[k].numpy() for d in draws]).reshape(2, 3, *draws[0][k].shape)
        for k in draws[0]
    }
    posterior, dims, coords = named_posterior(raw, p)
    assert posterior["v_difficulty"].shape == (2, 3)
    assert posterior["v_C(block)"].shape == (2, 3, 2)
    assert coords[dims["v_C(block)"][0]] == ["b2", "b3"]
    assert dims["v_1|participant_id"] == ["participant_id__factor_dim"]
    assert coords["participant_id__factor_dim"] == ["s00", "s01", "s02", "s03"]
    np.testing.assert_allclose(
        posterior["v_1|participant_id"],
        raw["v_1|participant_id_sigma"][..., None, 0]
        * raw["v_1|participant_id_offset"][..., 0],
    )
    block = "v_C(block)|participant_id"
    assert (
        posterior[block].shape[-2] == 4
        and dims[block][0] == "participant_id__factor_dim"
    )


@pytest.mark.slow
def test_cli_formula_fit(capsys, tmp_path, small):
    from sbi_plugins.cli import main

    csv = tmp_path / "trials.csv"
    small.to_csv(csv, index=False)
    out = tmp_path / "fit.nc"
    argv = [
        "fit", "ddm", str(csv), "--group", "participant_id",
        "--formula", "v ~ 1 + C(condition) + (1|participant_id)",
        "--formula", "a ~ 1 + difficulty",
        "--pooling", "complete", "--likelihood", "exact",
        "--draws", "20", "--tune", "20", "--chains", "1", "--seed", "1",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    idata = az.from_netcdf(out)
    posterior = idata.posterior
    assert {
        "v_Intercept",
        "v_C(condition)",
        "v_1|participant_id",
        "a_difficulty",
    } <= set(posterior.data_vars)
    assert posterior["v_1|participant_id"].sizes["participant_id__factor_dim"] == 4
    assert idata.log_likelihood[SITE].shape == (1, 20, len(small))
    assert idata.posterior_predictive["rt"].sizes["__obs__"] == len(small)
    assert "v ~ 1 + C(condition)" in idata.attrs["formulas"]
    capsys.readouterr()
    bad = [*argv[:-1], str(tmp_path / "other.nc")]
    bad[bad.index("a ~ 1 + difficulty")] = "q ~ 1"
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbi-plugins: error: formula 'q ~ 1' is for 'q'")
    assert "Traceback" not in err and not (tmp_path / "other.nc").exists()


FIT = {"draws": 150, "tune": 150, "chains": 2, "progress": False}
EFFECT = {"v": "v ~ 1 + C(condition) + (1|participant_id)"}
NO_EFFECT = {"v": "v ~ 1 + (1|participant_id)"}


def _fit(frame, formulas, lik="exact", **options):
    return sbi_plugins.fit(
        frame,
        "ddm",
        group="participant_id",
        formulas=formulas,
        pooling="complete",
        likelihood=lik,
        seed=3,
        **{**FIT, **options},
    )


@pytest.mark.slow
def test_recovers_a_condition_effect_on_drift(ddm):
    """20 subjects x 2 conditions x 100 trials: the 94% interval of the effect
    covers the truth and excludes 0; the fit has what InferenceData promises."""
    frame = ddm_design(ddm, subjects=20, trials=100, effect=TRUE_EFFECT, seed=1)
    idata = _fit(frame, EFFECT)
    effect = idata.posterior["v_C(condition)"]
    low, high = az.hdi(effect, hdi_prob=0.94)["v_C(condition)"].values
    assert low < TRUE_EFFECT < high
    assert high < 0
    assert float(az.rhat(effect.values)) < 1.05
    assert idata.sample_stats["diverging"].sum().item() == 0
    assert (
        idata.posterior["v_1|participant_id"].sizes["participant_id__factor_dim"] == 20
    )
    assert idata.log_likelihood[SITE].sizes["__obs__"] == 4000
    assert idata.posterior_predictive["rt"].sizes["__obs__"] == 4000


@pytest.fixture(scope="module")
def comparison_data(ddm):
    return ddm_design(ddm, subjects=10, trials=40, effect=TRUE_EFFECT, seed=5)


@pytest.fixture(scope="module")
def exact_effect_fit(comparison_data):
    return _fit(comparison_data, EFFECT)


COMPARED = [
    "v_Intercept",
    "v_C(condition)",
    "v_1|participant_id_sigma",
    "a_Intercept",
    "z_Intercept",
    "t_Intercept",
]


@pytest.mark.slow
def test_neural_matches_exact_on_a_formula_model(comparison_data, exact_effect_fit):
    """The same formula model with the shipped estimator: every coefficient's
    posterior mean within 0.3 exact posterior sd of the exact likelihood's, beyond
    two Monte Carlo standard errors of the difference (short chains here; the
    benchmark's long ones give the figure), and sds within 25%."""
    neural = _fit(comparison_data, EFFECT, lik="neural")
    a = az.summary(neural, var_names=COMPARED, round_to="none")
    b = az.summary(exact_effect_fit, var_names=COMPARED, round_to="none")
    gap = (a["mean"] - b["mean"]).abs() / b["sd"]
    noise = (a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2) ** 0.5 / b["sd"]
    assert (gap - 0.3 - 2 * noise < 0).all(), {"gap": gap, "noise": noise}
    assert ((a["sd"] / b["sd"] - 1).abs() < 0.25).all(), a["sd"] / b["sd"]


@pytest.mark.slow
def test_loo_prefers_the_true_effect_model(comparison_data, exact_effect_fit):
    without = _fit(comparison_data, NO_EFFECT)
    table = sbi_plugins.compare({"effect": exact_effect_fit, "no effect": without})
    assert table.index[0] == "effect"
    gap = table.loc["no effect", "elpd_diff"]
    assert gap > 2 * table.loc["no effect", "dse"], table
