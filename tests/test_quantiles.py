"""Response probabilities and RT quantiles per condition, and the plots that draw
them: the quantile-probability plot and the predictive check by condition show the
numbers a direct computation gives."""

from __future__ import annotations

import re

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest

from sbi_plugins import plot
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.quantiles import QUANTILES, condition_labels, quantile_table
from sbi_plugins.report import render_report


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def decision_fit(codes=(0.0, 1.0), n=240, seed=0, prior=False) -> az.InferenceData:
    """A fit-shaped InferenceData: two conditions ("easy" answered 80% with the
    last code, "hard" evenly), rt slower in "hard", a predictive of 2 x 30 data
    sets from the same generator, a kept condition column and a group index."""
    rng = np.random.default_rng(seed)
    cond = np.where(np.arange(n) % 2 == 0, "easy", "hard")
    subject = np.arange(n) % 3

    def simulate(shape):
        p_last = np.where(cond == "easy", 0.8, 1 / len(codes))
        last = rng.random((*shape, n)) < p_last
        other = rng.choice(codes[:-1], size=(*shape, n))
        response = np.where(last, codes[-1], other)
        rt = 0.3 + rng.gamma(3, np.where(cond == "easy", 0.1, 0.2), (*shape, n))
        return {"rt": rt, "response": response}

    observed = simulate(())
    groups = {
        "posterior": {"v": rng.normal(size=(2, 30, 3))},
        "observed_data": observed,
        "posterior_predictive": simulate((2, 30)),
        "constant_data": {"cond": cond, "participant_id_idx": subject},
    }
    if prior:
        groups["prior_predictive"] = simulate((1, 40))
    dims = {k: ["__obs__"] for k in ("rt", "response", "cond", "participant_id_idx")}
    dims["v"] = ["participant_id"]
    idata = az.from_dict(
        **groups, dims=dims, coords={"participant_id": ["s1", "s2", "s3"]}
    )
    for group in idata.groups():
        idata[group].attrs.update(simulator="not-installed", group="participant_id")
    return idata


def direct(choice, rt, rows, code):
    """The statistics by hand: share of `code` among `rows`, its RT quantiles."""
    hit = rows & (choice == code)
    return hit.sum() / rows.sum(), np.quantile(rt[hit], QUANTILES)


def test_table_holds_the_observed_and_predicted_statistics_by_condition():
    idata = decision_fit()
    table = quantile_table(idata, "cond", max_draws=1000)
    assert table.attrs["draws"] == 60  # every draw when max_draws covers them
    obs = idata.observed_data
    choice, rt = obs["response"].values, obs["rt"].values
    cond = idata.constant_data["cond"].values
    pred = idata.posterior_predictive
    pred_choice = pred["response"].values.reshape(60, -1)
    pred_rt = pred["rt"].values.reshape(60, -1)
    for c in ("easy", "hard"):
        for code in (0.0, 1.0):
            rows = table[(table["condition"] == c) & (table["response"] == code)]
            p, q = direct(choice, rt, cond == c, code)
            got = rows.set_index("statistic")
            assert got.loc["p", "observed"] == pytest.approx(p)
            np.testing.assert_allclose(
                got.loc[[f"q{x:g}" for x in QUANTILES], "observed"], q
            )
            by_draw = [
                direct(pc, pr, cond == c, code)
                for pc, pr in zip(pred_choice, pred_rt, strict=True)
            ]
            assert got.loc["p", "predicted"] == pytest.approx(
                np.mean([d[0] for d in by_draw])
            )
            q_draws = np.array([d[1] for d in by_draw])
            np.testing.assert_allclose(
                got.loc[[f"q{x:g}" for x in QUANTILES], "predicted"], q_draws.mean(0)
            )
            lo, hi = np.quantile(q_draws[:, 2], [0.03, 0.97])
            assert got.loc["q0.5", "low"] == pytest.approx(lo)
            assert got.loc["q0.5", "high"] == pytest.approx(hi)
    # the generator's truth shows: easy mostly code 1, hard slower
    p_easy = table.query("condition == 'easy' and response == 1 and statistic == 'p'")
    assert 0.7 < p_easy["observed"].item() < 0.9
    med = table[table["statistic"] == "q0.5"].groupby("condition")["observed"].mean()
    assert med["hard"] > med["easy"] + 0.15


def test_three_responses_and_the_group_column_as_the_condition():
    idata = decision_fit(codes=(1.0, 2.0, 3.0))
    table = quantile_table(idata, "participant_id")
    assert sorted(table["condition"].unique()) == ["s1", "s2", "s3"]
    assert sorted(table["response"].unique()) == [1.0, 2.0, 3.0]
    shares = table[table["statistic"] == "p"].groupby("condition")["observed"].sum()
    np.testing.assert_allclose(shares, 1.0)  # the three responses cover each subject
    labels = condition_labels(idata, "participant_id")
    assert (labels == np.array(["s1", "s2", "s3"])[np.arange(240) % 3]).all()


def test_no_condition_is_one_condition_and_a_wrong_one_says_what_there_is():
    idata = decision_fit()
    table = quantile_table(idata)
    assert set(table["condition"]) == {"all"}
    p, _ = direct(
        idata.observed_data["response"].values,
        idata.observed_data["rt"].values,
        np.ones(240, bool),
        1.0,
    )
    assert table.query("response == 1 and statistic == 'p'")[
        "observed"
    ].item() == pytest.approx(p)
    with pytest.raises(
        SbiPluginsError, match=r"no column 'condition'.*cond.*'participant_id'"
    ):
        quantile_table(idata, "condition")
    with pytest.raises(SbiPluginsError, match="no prior_predictive group"):
        quantile_table(idata, source="prior_predictive")
    with pytest.raises(SbiPluginsError, match="posterior_predictive.*got 'priors'"):
        quantile_table(idata, source="priors")


def test_posterior_and_prior_are_short_for_their_predictive_groups():
    idata = decision_fit(prior=True)
    for short in ("posterior", "prior"):
        table = quantile_table(idata, "cond", source=short)
        full = quantile_table(idata, "cond", source=f"{short}_predictive")
        assert table.attrs["source"] == f"{short}_predictive"
        assert table.equals(full)
    assert not quantile_table(idata, "cond", source="prior").equals(
        quantile_table(idata, "cond")
    )


def test_quantile_probability_plot_draws_the_tables_numbers():
    idata = decision_fit(prior=True)
    for source in ("posterior_predictive", "prior_predictive"):
        ax = plot.quantile_probability(idata, "cond", source=source)
        table = quantile_table(idata, "cond", source=source)
        p = table[table["statistic"] == "p"]
        for name in ("q0.1", "q0.9"):
            (dots,) = [c for c in ax.collections if c.get_gid() == f"observed {name}"]
            q = table[table["statistic"] == name]
            np.testing.assert_allclose(
                dots.get_offsets(), np.column_stack([p["observed"], q["observed"]])
            )
        (top,) = ax.child_axes  # the labels of the points, above the panel
        labels = [t.get_text() for t in top.get_xticklabels()]
        np.testing.assert_allclose(top.get_xticks(), p["observed"])
        assert labels == [
            "easy, response=0",
            "easy, response=1",
            "hard, response=0",
            "hard, response=1",
        ]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0] == "observed"
        assert legend[1].startswith(source.replace("_", " ") + ", 0.1 quantile")
        assert len(legend) == 1 + len(QUANTILES)


def test_ppc_by_condition_has_a_row_per_condition_with_its_shares():
    idata = decision_fit()
    axes = plot.plot_ppc(idata, by="cond")
    assert axes.shape == (2, 2)
    cond = idata.constant_data["cond"].values
    choice = idata.observed_data["response"].values
    for row, c in zip(axes, ("easy", "hard"), strict=True):
        for ax, code in zip(row, (0, 1), strict=True):
            share = np.mean(choice[cond == c] == code)
            assert ax.get_title().startswith(
                f"cond = {c}, response = {code}: observed {share:.0%}"
            )
            (patch,) = [p for p in ax.patches if p.get_label() == "observed"]
            heights, edges, _ = patch.get_data()
            assert np.sum(heights * np.diff(edges)) == pytest.approx(share)


def test_report_tables_the_statistics_by_condition_and_marks_misses():
    idata = decision_fit()
    text = render_report({"ddm": idata}, by="cond")
    table = quantile_table(idata, "cond")
    section = text[text.index("<table class='quantiles'>") :].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section)[1:]
    assert len(rows) == 4  # 2 conditions x 2 responses
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    classes = [re.findall(r"<td( class=\"[^\"]*\")?>", r) for r in rows]
    expected = table.set_index(["condition", "response", "statistic"])
    misses = 0
    for row, marks in zip(cells, classes, strict=True):
        condition, code = row[0], float(row[1])
        for name, cell, mark in zip(
            ["p", *(f"q{q:g}" for q in QUANTILES)], row[2:], marks[2:], strict=True
        ):
            r = expected.loc[(condition, code, name)]
            assert cell == f"{r['observed']:.3g} [{r['low']:.3g}, {r['high']:.3g}]"
            outside = not r["low"] <= r["observed"] <= r["high"]
            assert ("bad" in mark) == outside
            misses += outside
    assert misses < 8  # same generator: a few of 24 outside a 94% interval
    assert "<figcaption>ddm: quantile-probability plot by cond</figcaption>" in text
    assert "<figcaption>ddm: posterior predictive check by cond</figcaption>" in text
    # left to choose, the report finds the condition column itself
    assert "quantile-probability plot by cond" in render_report({"ddm": idata})
    with pytest.raises(SbiPluginsError, match=r"no column 'session'.*cond"):
        render_report({"ddm": idata}, by="session")


def test_report_draws_the_prior_predictive_where_a_fit_has_one():
    text = render_report({"ddm": decision_fit(prior=True)})
    for caption in (
        "ddm: prior predictive check (data simulated at prior draws)",
        "ddm: quantile-probability plot of the prior predictive by cond",
        "ddm: prior predictive check by cond",
    ):
        assert f"<figcaption>{caption}</figcaption>" in text
    tables = re.findall(r"<table class='quantiles'>.*?</table>", text, re.S)
    assert len(tables) == 2
    assert "data sets of the prior predictive] by cond" in tables[1]
    prior = quantile_table(decision_fit(prior=True), "cond", source="prior")
    easy = prior.query("condition == 'easy' and response == 1 and statistic == 'p'")
    low, high = easy[["low", "high"]].iloc[0]
    assert f"[{low:.3g}, {high:.3g}]" in tables[1]
    assert "prior predictive" not in render_report({"ddm": decision_fit()})


def test_three_responses_get_a_point_each_per_condition_in_both_plots():
    idata = decision_fit(codes=(1.0, 2.0, 3.0))
    ax = plot.quantile_probability(idata, "cond")
    table = quantile_table(idata, "cond")
    (dots,) = [c for c in ax.collections if c.get_gid() == "observed q0.5"]
    q = table[table["statistic"] == "q0.5"]
    assert len(dots.get_offsets()) == 6  # 2 conditions x 3 responses
    np.testing.assert_allclose(dots.get_offsets()[:, 1], q["observed"])
    assert plot.plot_ppc(idata, by="cond").shape == (2, 3)


def test_one_observable_by_group_wraps_into_columns_with_each_groups_counts():
    rng = np.random.default_rng(4)
    site = np.repeat([0, 1, 2, 3], 25)
    chips = rng.poisson(5 + 2 * site).astype(float)
    idata = az.from_dict(
        posterior={"lam": rng.normal(size=(1, 20, 4))},
        observed_data={"chips": chips},
        posterior_predictive={"chips": rng.poisson(5 + 2 * site, (1, 20, 100))},
        constant_data={"site_idx": site},
        dims={"chips": ["__obs__"], "site_idx": ["__obs__"], "lam": ["site"]},
        coords={"site": ["n", "e", "s", "w"]},
    )
    for group in idata.groups():
        idata[group].attrs.update(simulator="not-installed", group="site")
    axes = plot.plot_ppc(idata, by="site")
    assert axes.shape == (4, 1)
    assert axes[0, 0].get_gridspec().ncols == 3  # wrapped: 3 columns, 2 lines
    for ax, label, code in zip(axes[:, 0], ["n", "e", "s", "w"], range(4), strict=True):
        assert ax.get_title().startswith(f"site = {label}, chips")
        (patch,) = [p for p in ax.patches if p.get_label() == "observed"]
        heights, edges, _ = patch.get_data()
        centres = (edges[:-1] + edges[1:]) / 2
        mean = np.sum(heights * np.diff(edges) * centres)
        assert mean == pytest.approx(chips[site == code].mean(), abs=1e-9)
    assert [ax.get_legend() is not None for ax in axes[:, 0]] == [
        True,
        False,
        False,
        False,
    ]


def test_quantile_plot_frames_the_quantiles_not_the_interval_tails():
    """A lapse or prior tail in the predictive intervals does not squeeze the
    points: the y range spans the observed and predicted quantiles."""
    idata = decision_fit(prior=True)
    ax = plot.quantile_probability(idata, "cond", source="prior")
    table = quantile_table(idata, "cond", source="prior")
    q = table[table["statistic"] != "p"]
    low, high = ax.get_ylim()
    assert low <= q[["observed", "predicted"]].min().min()
    assert high >= q[["observed", "predicted"]].max().max()
    span = np.ptp(q[["observed", "predicted"]].to_numpy())
    assert high - low == pytest.approx(1.2 * span)  # a tenth either side
