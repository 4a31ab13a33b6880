"""sbi_plugins.plot on small synthetic fits: the figures show the numbers they claim
(observed shares, frequencies, bounds), not just that something was drawn."""

from __future__ import annotations

import json

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest

from sbi_plugins import plot
from sbi_plugins.errors import SbiPluginsError


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def synthetic_fit(
    observed: dict[str, np.ndarray],
    predicted: dict[str, np.ndarray] | None,
    group_index: np.ndarray,
    posterior: dict[str, np.ndarray],
    attrs: dict[str, str],
    labels=("a", "b"),
) -> az.InferenceData:
    """An InferenceData shaped as `fit` makes it: (chain, draw, ...) arrays, group
    labels on the posterior, a group index per row, attrs on every group."""
    dims = {name: ["__obs__"] for name in observed}
    dims["site_idx"] = ["__obs__"]
    dims.update(
        {name: ["site"] for name, value in posterior.items() if value.ndim == 3}
    )
    groups = {
        "posterior": posterior,
        "observed_data": observed,
        "constant_data": {"site_idx": group_index},
    }
    if predicted is not None:
        groups["posterior_predictive"] = predicted
    idata = az.from_dict(
        **groups, dims=dims, coords={"site": list(labels)}, attrs=attrs
    )
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    return idata


def observed_heights(ax: plt.Axes) -> tuple[np.ndarray, np.ndarray]:
    (patch,) = [p for p in ax.patches if p.get_label() == "observed"]
    values, edges, _ = patch.get_data()
    return np.asarray(values), np.asarray(edges)


@pytest.fixture
def ddm_like():
    """60 trials at two sites, 30% of them response -1; the 'simulator' predicts
    50% of -1 responses at site a and 10% at site b."""
    rng = np.random.default_rng(0)
    n = 60
    response = np.where(np.arange(n) % 10 < 3, -1.0, 1.0)
    rt = rng.gamma(4, 0.15, n) + 0.2
    site = np.repeat([0, 1], n // 2)
    share_minus = np.where(site == 0, 0.5, 0.1)
    draws = (2, 50)
    pred_response = np.where(rng.random((*draws, n)) < share_minus, -1.0, 1.0)
    pred_rt = rng.gamma(4, 0.15, (*draws, n)) + 0.2
    posterior = {
        "v": rng.normal(1, 0.1, (*draws, 2)),
        "a": rng.normal(1.2, 0.05, (*draws, 2)),
        "z": rng.normal(0.5, 0.02, draws),
        "t": rng.normal(0.2, 0.02, draws),
    }
    attrs = {"simulator": "ddm", "domain_warnings": "[]"}
    return synthetic_fit(
        {"rt": rt, "response": response},
        {"rt": pred_rt, "response": pred_response},
        site,
        posterior,
        attrs,
    )


def test_ddm_ppc_has_a_panel_per_response_with_its_share(ddm_like):
    axes = plot.plot_ppc(ddm_like)
    assert len(axes) == 2
    minus = float((ddm_like.posterior_predictive["response"] == -1).mean())
    assert 0.25 < minus < 0.35  # (50% + 10%) / 2, sampled
    assert axes[0].get_title() == f"response = -1: observed 30%, predicted {minus:.0%}"
    assert (
        axes[1].get_title() == f"response = 1: observed 70%, predicted {1 - minus:.0%}"
    )
    for ax, share in zip(axes, (0.3, 0.7), strict=True):
        heights, edges = observed_heights(ax)
        # each panel's density is scaled by its response's share: areas add to 1
        assert np.sum(heights * np.diff(edges)) == pytest.approx(share)
        assert ax.get_xlabel() == "rt"


def test_ppc_of_one_group_uses_that_groups_rows_only(ddm_like):
    axes = plot.plot_ppc(ddm_like, group="b")
    rows = ddm_like.constant_data["site_idx"].values == 1
    pred = ddm_like.posterior_predictive["response"].values[..., rows]
    minus = float((pred == -1).mean())
    assert 0.05 < minus < 0.15  # site b's simulator gives 10% of -1 responses
    assert (
        axes[0].get_title() == f"response = -1 (b): observed 30%, predicted {minus:.0%}"
    )
    with pytest.raises(SbiPluginsError, match=r"no group 'c'.*a, b"):
        plot.plot_ppc(ddm_like, group="c")


def test_ppc_reads_kinds_off_the_data_when_the_plugin_is_unknown(ddm_like):
    for group in ddm_like.groups():
        ddm_like[group].attrs["simulator"] = "not-installed"
    assert len(plot.plot_ppc(ddm_like)) == 2  # still split by the two-valued column


def test_count_ppc_shows_observed_frequencies():
    rng = np.random.default_rng(1)
    chips = rng.poisson(9, 40).astype(float)
    pred = rng.poisson(9, (2, 30, 40)).astype(float)
    idata = synthetic_fit(
        {"chips": chips},
        {"chips": pred},
        np.repeat([0, 1], 20),
        {"lam": rng.normal(9, 0.5, (2, 30, 2))},
        {"simulator": "cookie"},
    )
    (ax,) = plot.plot_ppc(idata)
    heights, edges = observed_heights(ax)
    centers = (edges[:-1] + edges[1:]) / 2
    assert np.allclose(np.diff(edges), 1.0)  # one bar per count
    expected = [np.mean(chips == c) for c in centers]
    assert np.allclose(heights, expected)
    assert ax.get_ylabel() == "probability"


def test_ppc_needs_a_posterior_predictive():
    idata = synthetic_fit(
        {"chips": np.arange(4.0)},
        None,
        np.array([0, 0, 1, 1]),
        {"lam": np.ones((1, 5, 2))},
        {"simulator": "cookie"},
    )
    with pytest.raises(SbiPluginsError, match="no posterior_predictive"):
        plot.plot_ppc(idata)


def test_domain_plot_flags_draws_at_a_bound():
    rng = np.random.default_rng(2)
    lam = np.stack(
        [rng.uniform(5, 15, (2, 50)), rng.uniform(39.9, 40, (2, 50))], axis=-1
    )  # site b sits at the upper bound of cookie's box [0.1, 40]
    idata = synthetic_fit(
        {"chips": np.arange(4.0)},
        None,
        np.array([0, 0, 1, 1]),
        {"lam": lam, "lam_mu": rng.normal(10, 1, (2, 50))},
        {"simulator": "cookie"},
    )
    (ax,) = plot.plot_domain(idata)  # lam only: lam_mu has no training box
    assert ax.get_title().startswith("lam: training domain [0.1, 40]")
    assert "pile up at a bound" in ax.get_title()
    low, high = ax.get_xlim()
    assert low < 0.1 and high > 40
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    (ax,) = plot.plot_domain(idata, bounds={"lam": (0.0, 100.0)})
    assert "pile up" not in ax.get_title()


def test_domain_plot_needs_bounds_when_the_plugin_is_missing():
    idata = synthetic_fit(
        {"x": np.arange(4.0)},
        None,
        np.array([0, 0, 1, 1]),
        {"p": np.ones((1, 5))},
        {"simulator": "nowhere"},
    )
    with pytest.raises(SbiPluginsError, match=r"'nowhere' is not installed.*bounds="):
        plot.plot_domain(idata)
    with pytest.raises(SbiPluginsError, match="none of the parameters q"):
        plot.plot_domain(idata, bounds={"q": (0, 1)})


def test_forest_labels_models_and_needs_shared_variables(ddm_like):
    other = ddm_like.copy()
    axes = plot.plot_forest({"first": ddm_like, "second": other}, var_names=["v"])
    legend = axes[0].get_legend()
    assert sorted(t.get_text() for t in legend.get_texts()) == ["first", "second"]
    assert plot.shared_variables({"x": ddm_like, "y": other}) == ["v", "a", "z", "t"]
    lonely = az.from_dict(posterior={"w": np.ones((1, 5))})
    with pytest.raises(SbiPluginsError, match="share no posterior variable"):
        plot.plot_forest({"x": ddm_like, "y": lonely})


def test_attrs_helpers_read_what_fit_records(ddm_like):
    message = "posterior draws of 'v' pile up at the upper bound 3"
    for group in ddm_like.groups():
        ddm_like[group].attrs["domain_warnings"] = json.dumps([message])
        ddm_like[group].attrs["pooling"] = json.dumps({"v": "partial", "t": "none"})
    assert plot.domain_warnings(ddm_like) == [message]
    assert plot.pooling_of(ddm_like) == {"v": "partial", "t": "none"}
