"""Per-parameter formulas: parsing, names, the box link, cells, shorthand, fits."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.likelihoods.distribution import likelihood
from sbi_plugins.model.formulas import FormulaError, inverse_link, link
from sbi_plugins.model.model import build_model, plan_model

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


def build(ddm, frame, formulas, pooling="complete", group="participant_id", lik=None):
    """The hierarchical model `fit` builds, and its keyword arguments."""
    parameters = plan_model(ddm, frame, group, pooling, formulas)
    data = prepare_data(frame, ddm, group)
    return build_model(parameters, data, lik or likelihood("ddm", exact=True))


def model_of(ddm, frame, formulas, pooling="complete", group="participant_id"):
    return build(ddm, frame, formulas, pooling, group)[0]


def test_parse_names_terms_and_cells(ddm, small):
    model = model_of(
        ddm,
        small,
        {"v": "v ~ 1 + C(condition) + (1 + difficulty | participant_id)"},
        pooling={"a": "partial", "z": "complete", "t": "none"},
    )
    v, a, z, t = model.parameters
    assert [term.name for term in v.common] == ["Intercept", "C(condition)"]
    assert v.common[1].levels == ["hard"]
    assert [term.name for term in v.group] == [
        "1|participant_id",
        "difficulty|participant_id",
    ]
    assert v.group[0].groups == sorted(small["participant_id"].unique())
    # the others keep their pooling (and its priors), not a translated formula
    assert [(p.name, p.pooling) for p in (a, z, t)] == [
        ("a", "partial"),
        ("z", "complete"),
        ("t", "none"),
    ]
    # cells are the unique design rows (with the subject: a and t vary by it)
    assert model.cells.count == 4 * 2
    cell_of = pd.Series(model.cells.index).groupby(
        [small["participant_id"], small["condition"]]
    )
    assert (cell_of.nunique() == 1).all() and cell_of.first().nunique() == 8
    # each cell knows its subject, for the pooled parameters
    subjects = pd.factorize(small["participant_id"], sort=True)[0]
    np.testing.assert_array_equal(model.cells.group[model.cells.index], subjects)


def test_numeric_predictor_and_intercept_prior(ddm, small):
    frame = small.assign(x=np.linspace(-1, 1, len(small)))
    model = model_of(ddm, frame, ["v ~ 1 + x", "a ~ 1"])
    v, a = model.parameters[:2]
    assert model.cells.count == len(frame)  # every row its own cell
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
        (v, *_) = plan_model(ddm, small, "participant_id", "complete", formulas)
        assert v.formula == "v ~ 1 + difficulty"
        return
    with pytest.raises(FormulaError, match=pattern) as info:
        plan_model(ddm, small, "participant_id", "complete", formulas)
    assert "\n" not in str(info.value)


def test_a_parameter_with_both_a_pooling_mode_and_a_formula_is_refused(ddm, small):
    with pytest.raises(SbiPluginsError, match=r"'v' has both a pooling mode and a"):
        plan_model(ddm, small, "participant_id", {"v": "none"}, {"v": "v ~ 1"})


def test_pooling_needs_a_group_with_formulas_too(ddm, small):
    """Without a group, 'partial' means the same with and without formulas: it
    needs one (the formula path used to make it 'complete' silently)."""
    for formulas in (None, {"v": "v ~ 1 + difficulty"}):
        with pytest.raises(
            SbiPluginsError, match=r"'partial' need groups: pass group="
        ):
            plan_model(ddm, small, None, "partial", formulas)


def test_empty_predictor_values_are_named(ddm, small):
    frame = small.copy()
    frame.loc[[3, 7], "difficulty"] = np.nan
    with pytest.raises(FormulaError, match=r"column 'difficulty'.*empty at rows 3, 7"):
        plan_model(ddm, frame, "participant_id", "complete", {"v": "v ~ difficulty"})


def _random_values(model, seed) -> dict[str, torch.Tensor]:
    """One draw of every latent site from the model's prior."""
    return {k: torch.as_tensor(v[0, 0]) for k, v in model.prior_draws(1, seed).items()}


def test_link_keeps_every_parameter_in_the_box(ddm, small):
    """Whatever the coefficients, even absurd ones, trial-wise parameters stay in
    the training box (the bounds themselves at most)."""
    model = model_of(
        ddm, small, {"v": "v ~ 1 + difficulty + (1 + difficulty|participant_id)"}
    )
    draw = _random_values(model, 0)
    low = torch.tensor(ddm.lower, dtype=torch.float64)
    high = torch.tensor(ddm.upper, dtype=torch.float64)
    for scale in (0.0, 1.0, 30.0, 1e4, -1e4):
        values = {
            name: torch.full_like(value, scale) * (1 + 0.1 * i)
            if name.startswith("v_")
            else value
            for i, (name, value) in enumerate(draw.items())
        }
        theta = model.cell_parameters(values)
        assert theta.shape == (model.cells.count, 4)
        assert torch.isfinite(theta).all()
        assert ((theta >= low) & (theta <= high)).all(), scale
    # and the link is the scaled logistic, inverted by inverse_link
    eta = np.array([-3.0, 0.0, 2.5])
    back = inverse_link(link(torch.tensor(eta), -3.0, 3.0).numpy(), -3.0, 3.0)
    np.testing.assert_allclose(back, eta, atol=1e-12)


def _trace(model, values, kwargs):
    conditioned = pyro.poutine.condition(model, values)
    trace = pyro.poutine.trace(conditioned).get_trace(**kwargs)
    trace.compute_log_prob()
    return trace


def test_cells_score_as_row_by_row(ddm, small):
    """Scoring once per cell through the grouped fast path gives the numbers of
    scoring every row at its own parameters, for the neural and exact likelihood."""
    model = model_of(ddm, small, {"v": "v ~ 1 + C(condition) + (1|participant_id)"})
    x = torch.as_tensor(small[["rt", "response"]].to_numpy(float))
    index = torch.as_tensor(model.cells.index)
    for lik in (likelihood("ddm", progress=False), likelihood("ddm", exact=True)):
        # random drift coefficients; a, z, t at their (data-built) starts, where
        # every row has a finite likelihood
        random = _random_values(model, 0)
        values = model.start() | {k: v for k, v in random.items() if k[:2] == "v_"}
        theta = model.cell_parameters(values)
        per_cell = lik.rows(theta, index).log_prob(x)
        per_row = lik.log_prob(theta[index], x)
        assert torch.isfinite(per_row).all()
        torch.testing.assert_close(per_cell, per_row, rtol=1e-4, atol=1e-4)
        if not lik.exact:
            assert lik._grouped is not None  # the fast path was in use


@pytest.mark.parametrize("mode", ["partial", "none", "complete"])
def test_a_parameters_prior_never_depends_on_the_others(ddm, small, mode):
    """Giving `a` a formula changes nothing about v, z and t: the same sites, the
    same prior log density at the same values, the same recorded prior. (The old
    formula path translated every other parameter into a formula, with other
    priors.)"""
    pooled, pooled_kwargs = build(ddm, small, None, pooling=mode)
    mixed, mixed_kwargs = build(ddm, small, {"a": "a ~ 1 + C(condition)"}, pooling=mode)
    values = _random_values(pooled, 1) | _random_values(mixed, 2)
    a, b = _trace(pooled, values, pooled_kwargs), _trace(mixed, values, mixed_kwargs)
    others = [
        name
        for name, site in a.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name[0] != "a"
    ]
    assert others and set(others) < set(b.nodes)
    for name in others:
        assert b.nodes[name]["log_prob_sum"].item() == pytest.approx(
            a.nodes[name]["log_prob_sum"].item(), rel=1e-12
        ), name
    described = (pooled.attrs()["priors"], mixed.attrs()["priors"])
    assert all(described[0][n] == described[1][n] for n in "vzt")
    assert described[1]["a"]["pooling"] == "formula"


def test_formula_and_pooling_models_share_the_likelihood(ddm, small):
    """The same subject values, reached through `v ~ 1 + (1|participant_id)`
    (intercept + offsets through the link) and through the pooling model's
    per-group values, score the data identically: the two parametrizations differ
    only in their priors."""
    v_g = torch.tensor([0.3, -0.8, 1.7, 0.9], dtype=torch.float64)
    pooled = {k: torch.tensor(v, dtype=torch.float64) for k, v in
              {"a": 1.1, "z": 0.45, "t": 0.25}.items()}  # fmt: skip
    pooling = {"v": "partial", "a": "complete", "z": "complete", "t": "complete"}
    old, old_kwargs = build(ddm, small, None, pooling=pooling)
    old_values = {"v_mu": torch.tensor(0.5), "v_sigma": torch.tensor(1.0), "v": v_g}
    old_trace = _trace(old, old_values | pooled, old_kwargs)
    new, new_kwargs = build(
        ddm, small, {"v": "v ~ 1 + (1|participant_id)"}, pooling="complete"
    )
    eta = inverse_link(v_g.numpy(), -3.0, 3.0)
    intercept, sigma = 0.2, 0.7
    new_values = {
        "v_Intercept": torch.tensor([intercept], dtype=torch.float64),
        "v_1|participant_id_sigma": torch.tensor([sigma], dtype=torch.float64),
        "v_1|participant_id_offset": torch.tensor((eta - intercept) / sigma)[:, None],
    }
    new_trace = _trace(new, new_values | pooled, new_kwargs)
    x = old_kwargs["x"]
    old_lp = old_trace.nodes[SITE]["fn"].log_prob(x)
    new_lp = new_trace.nodes[SITE]["fn"].log_prob(x)
    assert torch.isfinite(old_lp).all()
    torch.testing.assert_close(new_lp, old_lp, rtol=1e-9, atol=1e-9)


def test_named_posterior_shapes_and_dims(ddm, small):
    frame = small.assign(
        block=np.tile(["b1", "b2", "b3"], len(small) // 3 + 1)[: len(small)]
    )
    model = model_of(
        ddm,
        frame,
        {"v": "difficulty + C(block) + (1|participant_id) + (C(block)|participant_id)"},
    )
    raw = {k: v.reshape(2, 3, *v.shape[2:]) for k, v in model.prior_draws(6, 0).items()}
    posterior, dims, coords = model.posterior_variables(raw)
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
    assert posterior["a"].shape == (2, 3)  # pooled complete: as a pooling model
    assert posterior["v_difficulty"].ndim == 2  # numeric: no level dim


def test_a_two_level_condition_names_its_contrast(ddm, small):
    """`C(condition)` with two levels keeps its dim, as Bambi's, so the data say
    which level the coefficient is (the reference level is the first sorted)."""
    model = model_of(ddm, small, {"v": "v ~ 1 + C(condition)"})
    raw = {k: v.reshape(2, 3, *v.shape[2:]) for k, v in model.prior_draws(6, 0).items()}
    posterior, dims, coords = model.posterior_variables(raw)
    assert posterior["v_C(condition)"].shape == (2, 3, 1)
    assert coords[dims["v_C(condition)"][0]] == ["hard"]
    assert posterior["v_Intercept"].shape == (2, 3)


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
    effect = idata.posterior["v_C(condition)"].sel({"v_C(condition)_dim": "hard"})
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
    "a",
    "z",
    "t",
]


@pytest.mark.slow
def test_neural_matches_exact_on_a_formula_model(comparison_data, exact_effect_fit):
    """The same formula model with the shipped estimator: every coefficient's
    posterior mean within 0.3 exact posterior sd of the exact likelihood's, beyond
    two Monte Carlo standard errors of the difference (short chains here; the
    benchmark's long ones give the figure), and sds within 15% beyond two Monte
    Carlo standard errors of their ratio (ArviZ's mcse_sd: with 150 draws a chain
    the random intercept's sd is itself uncertain by ~10%; 4 x 1000 draws give
    ratios 0.97-1.05)."""
    neural = _fit(comparison_data, EFFECT, lik="neural")
    a = az.summary(neural, var_names=COMPARED, round_to="none")
    b = az.summary(exact_effect_fit, var_names=COMPARED, round_to="none")
    gap = (a["mean"] - b["mean"]).abs() / b["sd"]
    noise = (a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2) ** 0.5 / b["sd"]
    assert (gap - 0.3 - 2 * noise < 0).all(), {"gap": gap, "noise": noise}
    ratio = a["sd"] / b["sd"]
    ratio_noise = (a["mcse_sd"] ** 2 + b["mcse_sd"] ** 2) ** 0.5 / b["sd"]
    assert ((ratio - 1).abs() - 0.15 - 2 * ratio_noise < 0).all(), {
        "ratio": ratio,
        "noise": ratio_noise,
    }


@pytest.mark.slow
def test_loo_prefers_the_true_effect_model(comparison_data, exact_effect_fit):
    without = _fit(comparison_data, NO_EFFECT)
    table = sbi_plugins.compare({"effect": exact_effect_fit, "no effect": without})
    assert table.index[0] == "effect"
    gap = table.loc["no effect", "elpd_diff"]
    assert gap > 2 * table.loc["no effect", "dse"], table


def test_a_formula_parameter_is_read_on_its_own_scale_per_condition():
    """`population_values(idata, "v", by="cond")` is the link of the intercept
    plus each level's coefficient, draw by draw, on v's own scale (what an HSSM
    user reads per condition); all rows at once is the average design row; a
    parameter without a formula and a column not in the data are refused."""
    from sbi_plugins_ddm import simulate_dataset

    trials, _ = simulate_dataset(3, 20, seed=1)
    trials["cond"] = np.where(np.arange(len(trials)) % 4 == 0, "easy", "hard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            formulas={"v": "v ~ 1 + C(cond) + (1|participant_id)"},
            pooling={"a": "complete", "z": "complete", "t": "complete"},
            likelihood="exact",
            draws=20,
            tune=20,
            chains=2,
            seed=1,
            progress=False,
            posterior_predictive=False,
        )
    values = sbi_plugins.population_values(fit, "v", by="cond")["v"]
    assert list(values["cond"].values) == ["easy", "hard"]
    intercept = fit.posterior["v_Intercept"].values
    slope = fit.posterior["v_C(cond)"].values[..., 0]

    def on_v_scale(eta):
        return -3 + 6 / (1 + np.exp(-eta))

    np.testing.assert_allclose(values.sel(cond="easy"), on_v_scale(intercept))
    np.testing.assert_allclose(values.sel(cond="hard"), on_v_scale(intercept + slope))
    every = sbi_plugins.population_values(fit, "v")["v"].sel(rows="all")
    np.testing.assert_allclose(every, on_v_scale(intercept + 0.75 * slope))
    assert az.summary(sbi_plugins.population_values(fit, "v", by="cond")).shape[0] == 2
    with pytest.raises(SbiPluginsError, match="'a' has no formula"):
        sbi_plugins.population_values(fit, "a")
    with pytest.raises(SbiPluginsError, match="column 'condition' is not in"):
        sbi_plugins.population_values(fit, "v", by="condition")
