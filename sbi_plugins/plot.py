"""Thin plots on ArviZ and matplotlib: the pictures a scientist reads a fit by.

Not a plotting library: each function draws one kind of figure from a fit's
InferenceData (ArviZ does the statistics) and returns the matplotlib axes, to adjust
or save. `sbi_plugins.report` puts them all in one HTML page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sbi_plugins.errors import PluginError, SbiPluginsError
from sbi_plugins.quantiles import (
    QUANTILES,
    condition_labels,
    condition_order,
    group_labels,
    observable_kinds,
    pick_draws,
    predictive_group,
    quantile_table,
    source_label,
)
from sbi_plugins.results.idata import fit_attrs, per_parameter_attr

__all__ = [
    "fit_attrs",
    "plot_domain",
    "plot_forest",
    "plot_ppc",
    "plot_shrinkage",
    "quantile_probability",
    "save_shrinkage_plot",
    "simulator_bounds",
]

EDGE_FRACTION = 0.01
"""As in the runner: draws within 1% of the box width of a bound are 'at the edge'."""


def simulator_bounds(idata: az.InferenceData) -> dict[str, tuple[float, float]]:
    """The training box of the fit's simulator parameters, from its installed plugin."""
    from sbi_plugins.plugin.registry import get_simulator

    name = fit_attrs(idata).get("simulator")
    if not name:
        raise SbiPluginsError(
            "this fit records no simulator (attrs['simulator']); pass "
            "bounds={'name': (lower, upper)}"
        )
    try:
        simulator = get_simulator(name)
    except PluginError as exc:
        raise SbiPluginsError(
            f"the fit's simulator {name!r} is not installed ({exc}); install its "
            "plugin or pass bounds={'name': (lower, upper)}"
        ) from exc
    return {p.name: (p.lower, p.upper) for p in simulator.parameters}


def _group_dim(idata: az.InferenceData, parameter: str) -> str:
    dims = [d for d in idata.posterior[parameter].dims if d not in ("chain", "draw")]
    if len(dims) != 1:
        raise SbiPluginsError(
            f"{parameter!r} has no group dimension in this fit (pooling 'complete'?)"
        )
    return dims[0]


def plot_shrinkage(
    unpooled: az.InferenceData,
    hierarchical: az.InferenceData,
    parameter: str,
    *,
    pooled: az.InferenceData | None = None,
    hdi_prob: float = 0.94,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Per group: the unpooled and the hierarchical estimate (mean and HDI), with the
    population mean. Partial pooling pulls noisy groups towards the population."""
    dim = _group_dim(hierarchical, parameter)
    labels = hierarchical.posterior[dim].values
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 4))
    positions = np.arange(len(labels))
    for offset, (name, idata, color) in zip(
        (-0.12, 0.12),
        (
            ("unpooled", unpooled, "tab:gray"),
            ("hierarchical", hierarchical, "tab:blue"),
        ),
        strict=True,
    ):
        draws = idata.posterior[parameter]
        mean = draws.mean(("chain", "draw")).values
        hdi = az.hdi(idata, var_names=[parameter], hdi_prob=hdi_prob)[parameter].values
        ax.errorbar(
            positions + offset,
            mean,
            yerr=np.abs(hdi.T - mean),
            fmt="o",
            color=color,
            capsize=3,
            label=f"{name} (mean, {hdi_prob:.0%} HDI)",
        )
    mu_name = f"{parameter}_mu"
    if mu_name in hierarchical.posterior:
        mu = float(hierarchical.posterior[mu_name].mean())
        ax.axhline(
            mu, color="tab:blue", ls="--", lw=1, label=f"population mean {mu_name}"
        )
    if pooled is not None:
        value = float(pooled.posterior[parameter].mean())
        ax.axhline(value, color="tab:red", ls=":", lw=1, label="pooled estimate")
    ax.set_xticks(positions, [str(label) for label in labels])
    ax.set_xlabel(dim)
    ax.set_ylabel(parameter)
    ax.set_title(f"Shrinkage of {parameter}: unpooled vs hierarchical")
    ax.legend(fontsize="small", loc="best")
    return ax


def save_shrinkage_plot(
    fits: Mapping[str, az.InferenceData], parameter: str, path: str | Path
) -> Path:
    """Write the shrinkage plot of a demo-style trio of fits as PNG."""
    ax = plot_shrinkage(
        fits["unpooled"], fits["hierarchical"], parameter, pooled=fits.get("pooled")
    )
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return Path(path)


def _as_fits(
    fits: Mapping[str, az.InferenceData] | az.InferenceData,
) -> dict[str, az.InferenceData]:
    if isinstance(fits, az.InferenceData):
        return {"fit": fits}
    if not fits:
        raise SbiPluginsError("no fits given: pass {'name': InferenceData, ...}")
    return dict(fits)


def shared_variables(fits: Mapping[str, az.InferenceData]) -> list[str]:
    """Posterior variables every fit has, in the first fit's order."""
    first, *rest = fits.values()
    names = [
        str(name)
        for name in first.posterior.data_vars
        if all(name in idata.posterior for idata in rest)
    ]
    if not names:
        raise SbiPluginsError(
            f"the fits {', '.join(map(repr, fits))} share no posterior variable; "
            "pass var_names"
        )
    return names


def plot_forest(
    fits: Mapping[str, az.InferenceData] | az.InferenceData,
    var_names: Sequence[str] | None = None,
    *,
    hdi_prob: float = 0.94,
    combined: bool = True,
    **kwargs,
) -> np.ndarray:
    """`az.plot_forest` of several fits side by side, labelled by model name: how
    estimates move between pooling choices. Default variables: those all fits have."""
    fits = _as_fits(fits)
    names = list(var_names) if var_names else shared_variables(fits)
    axes = az.plot_forest(
        list(fits.values()),
        model_names=list(fits),
        var_names=names,
        combined=combined,
        hdi_prob=hdi_prob,
        **kwargs,
    )
    axes[0].set_title(f"{hdi_prob:.0%} HDI by model")
    return axes


def _group_rows(idata: az.InferenceData, group: object) -> np.ndarray:
    """Boolean mask of the data rows of one group (by its label)."""
    index_vars = []
    if "constant_data" in idata.groups():
        named = f"{fit_attrs(idata).get('group') or 'group'}_idx"
        index_vars = [
            str(n) for n in idata.constant_data.data_vars if str(n).endswith("_idx")
        ]
        index_vars.sort(key=lambda n: n != named)  # the fit's own index first
    if not index_vars:
        raise SbiPluginsError("this fit has no groups (constant_data has no *_idx)")
    name = index_vars[0]
    dim = name[: -len("_idx")]
    index = idata.constant_data[name].values
    labels = group_labels(idata, dim)
    if labels is not None and str(group) in labels:
        return index == labels.index(str(group))
    if labels is None and isinstance(group, (int, np.integer)):
        return index == int(group)
    raise SbiPluginsError(
        f"no group {group!r} in this fit; its {dim!r} labels are "
        f"{', '.join(labels or map(str, np.unique(index)))}"
    )


def _ppc_arrays(
    idata: az.InferenceData,
    group: object,
    max_draws: int,
    seed: int,
    source: str = "posterior_predictive",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Observed rows (n,) and simulated data sets (draws, n) per observable, from
    `source` (the posterior or the prior predictive)."""
    simulated = predictive_group(idata, source)
    rows = None if group is None else _group_rows(idata, group)
    observed, predicted = {}, {}
    pick = None
    for name in idata.observed_data.data_vars:
        obs = np.asarray(idata.observed_data[name].values, dtype=float)
        pred = np.asarray(simulated[name].values, dtype=float)
        pred = pred.reshape(-1, pred.shape[-1])
        if pick is None:
            pick = pick_draws(len(pred), max_draws, seed)
        if rows is not None:
            obs, pred = obs[rows], pred[:, rows]
        observed[str(name)], predicted[str(name)] = obs, pred[pick]
    return observed, predicted


def _edges(obs: np.ndarray, pred: np.ndarray, discrete: bool) -> np.ndarray:
    lo = min(obs.min(), np.quantile(pred, 0.001))
    hi = max(obs.max(), np.quantile(pred, 0.999))
    if discrete and hi - lo <= 60:
        return np.arange(np.floor(lo), np.ceil(hi) + 2) - 0.5
    return np.linspace(lo, hi, 41)


def _draw_histogram(
    ax: plt.Axes,
    obs: np.ndarray,
    pred: np.ndarray,
    edges: np.ndarray,
    scale: float,
    hdi_prob: float,
    label: str,
) -> None:
    """Observed histogram (steps) over the predictive mean and interval (band);
    heights are densities times `scale`, so several panels can share one total."""
    width = np.diff(edges)
    obs_h = np.histogram(obs, edges)[0] / (width * scale)
    pred_h = np.stack([np.histogram(p, edges)[0] for p in pred]) / (width * scale)
    tail = (1 - hdi_prob) / 2
    low, high = np.quantile(pred_h, [tail, 1 - tail], axis=0)
    ax.stairs(
        high,
        edges,
        baseline=low,
        fill=True,
        alpha=0.35,
        color="tab:blue",
        label=f"{label} ({hdi_prob:.0%} interval)",
    )
    ax.stairs(pred_h.mean(0), edges, color="tab:blue", label=f"{label} mean")
    ax.stairs(obs_h, edges, color="k", lw=1.5, label="observed")


def plot_ppc(
    idata: az.InferenceData,
    *,
    group: object = None,
    by: str | None = None,
    source: str = "posterior_predictive",
    max_draws: int = 200,
    hdi_prob: float = 0.94,
    seed: int = 0,
) -> np.ndarray:
    """Observed data against data sets the simulator made at posterior draws (not the
    network: this is what checks the network). Counts: histograms; a choice with a
    continuous observable (DDM): densities of the latter per response, each scaled by
    the response's share, so choice proportions are checked too. `group`: one
    group's rows only (its label). `by`: one row of panels per value of a data
    column (a condition kept in `constant_data`, or the group column); the axes
    come back as (condition, panel) then, else one row. `source="prior_predictive"`
    draws what the priors imply instead."""
    observed, predicted = _ppc_arrays(idata, group, max_draws, seed, source)
    kinds = observable_kinds(idata)
    where = "" if group is None else f" ({group})"
    label = source_label(source)
    if by is None:
        panels = _ppc_panels(kinds, observed, predicted)
        fig, axes = _panel_grid(1, panels)
        _draw_ppc_row(axes[0], kinds, observed, predicted, where, hdi_prob, label)
        fig.tight_layout()
        return axes[0]
    condition = condition_labels(idata, by)
    if group is not None:
        condition = condition[_group_rows(idata, group)]
    conditions = condition_order(idata, by, condition)
    panels = _ppc_panels(kinds, observed, predicted)
    fig, axes = _panel_grid(len(conditions), panels)
    for i, (row, c) in enumerate(zip(axes, conditions, strict=True)):
        rows = condition == c
        _draw_ppc_row(
            row,
            kinds,
            {n: v[rows] for n, v in observed.items()},
            {n: v[:, rows] for n, v in predicted.items()},
            where,
            hdi_prob,
            label,
            codes=panels,
            prefix=f"{by} = {c}, ",
        )
        if i and row[0].get_legend():
            row[0].get_legend().remove()  # one legend, on the first row
    fig.tight_layout()
    return axes


def _decision_pair(kinds: Mapping[str, str]) -> tuple[str, str] | None:
    choices = [n for n, k in kinds.items() if k == "choice"]
    continuous = [n for n, k in kinds.items() if k == "continuous"]
    if len(kinds) == 2 and len(choices) == 1 and len(continuous) == 1:
        return choices[0], continuous[0]
    return None


def _ppc_panels(
    kinds: Mapping[str, str],
    observed: Mapping[str, np.ndarray],
    predicted: Mapping[str, np.ndarray],
) -> list:
    """The panels of one row: a decision model's response codes, else observables."""
    pair = _decision_pair(kinds)
    if pair is None:
        return list(kinds)
    values = np.concatenate([observed[pair[0]], predicted[pair[0]].ravel()])
    return [float(c) for c in np.unique(values[np.isfinite(values)])]


def _panel_grid(rows: int, panels: list) -> tuple[plt.Figure, np.ndarray]:
    """(rows, panels) axes; one panel a row wraps into up to three columns, the
    axes still coming back as (rows, 1)."""
    if len(panels) == 1 and rows > 1:
        columns = min(rows, 3)
        lines = -(-rows // columns)
        fig, grid = plt.subplots(
            lines, columns, figsize=(4.6 * columns, 3.3 * lines), squeeze=False
        )
        for ax in grid.ravel()[rows:]:
            ax.set_visible(False)
        return fig, grid.ravel()[:rows].reshape(rows, 1)
    return plt.subplots(
        rows,
        len(panels),
        figsize=(5 * len(panels), 3.6 * rows),
        squeeze=False,
        sharey="row",
    )


def _draw_ppc_row(
    axes: np.ndarray,
    kinds: Mapping[str, str],
    observed: Mapping[str, np.ndarray],
    predicted: Mapping[str, np.ndarray],
    where: str,
    hdi_prob: float,
    label: str,
    codes: list | None = None,
    prefix: str = "",
) -> None:
    pair = _decision_pair(kinds)
    if pair is not None:
        choice, value = pair
        codes = codes or _ppc_panels(kinds, observed, predicted)
        finite = predicted[value][np.isfinite(predicted[value])]
        edges = _edges(observed[value][np.isfinite(observed[value])], finite, False)
        n = len(observed[value])
        for ax, code in zip(axes, codes, strict=True):
            obs = observed[value][observed[choice] == code]
            pred = [
                p[c == code]
                for p, c in zip(predicted[value], predicted[choice], strict=True)
            ]
            _draw_histogram(ax, obs, pred, edges, n, hdi_prob, label)
            share = np.mean([len(p) / n for p in pred])
            ax.set_title(
                f"{prefix}{choice} = {code:g}{where}: observed {len(obs) / n:.0%}, "
                f"predicted {share:.0%}",
                fontsize="medium",
            )
            ax.set_xlabel(value)
        axes[0].set_ylabel("density x share of response")
        axes[0].legend(fontsize="small")
        _note_omissions(axes[-1], observed[choice], predicted[choice])
        return
    for ax, (name, kind) in zip(axes, kinds.items(), strict=True):
        edges = _edges(observed[name], predicted[name], discrete=kind != "continuous")
        _draw_histogram(
            ax,
            observed[name],
            list(predicted[name]),
            edges,
            len(observed[name]),
            hdi_prob,
            label,
        )
        ax.set_xlabel(name)
        ax.set_ylabel("probability" if kind != "continuous" else "density")
        ax.set_title(
            f"{prefix}{name}{where}: observed vs {label}",
            fontsize="medium",
        )
    axes[0].legend(fontsize="small")


def _note_omissions(ax: plt.Axes, observed: np.ndarray, predicted: np.ndarray) -> None:
    """Where trials ended without a response (a deadline), their share observed
    and predicted, in the panel's corner: the panels' shares leave it out."""
    observed_rate = float(np.isnan(observed).mean()) if len(observed) else 0.0
    predicted_rate = float(np.isnan(predicted).mean()) if predicted.size else 0.0
    if observed_rate or predicted_rate >= 0.005:
        ax.text(
            0.98,
            0.95,
            f"no response: observed {observed_rate:.0%}, "
            f"predicted {predicted_rate:.0%}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize="small",
        )


def quantile_probability(
    idata: az.InferenceData,
    by: str | None = None,
    *,
    quantiles: Sequence[float] = QUANTILES,
    source: str = "posterior_predictive",
    hdi_prob: float = 0.94,
    max_draws: int = 200,
    seed: int = 0,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """The quantile-probability plot of decision models: for each condition (the
    values of data column `by`) and response, the response's probability on x and
    its RT quantiles on y; observed as dots, the simulated data sets (posterior or
    `source="prior_predictive"`) as their mean with a central `hdi_prob` interval
    both ways, the same quantile joined across conditions. The numbers are those of
    `sbi_plugins.quantiles.quantile_table` called with the same arguments."""
    table = quantile_table(
        idata,
        by,
        quantiles=quantiles,
        source=source,
        hdi_prob=hdi_prob,
        max_draws=max_draws,
        seed=seed,
    )
    choice = table.attrs["choice"]
    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    p = table[table["statistic"] == "p"].reset_index(drop=True)
    names = [f"q{q:g}" for q in quantiles]
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(names)))
    predicted_label = source_label(source)
    for k, (name, colour) in enumerate(zip(names, colours, strict=True)):
        q = table[table["statistic"] == name].reset_index(drop=True)
        order = np.argsort(p["predicted"].to_numpy())
        ax.plot(
            p["predicted"].to_numpy()[order],
            q["predicted"].to_numpy()[order],
            "-",
            color=colour,
            lw=0.8,
            alpha=0.7,
        )
        ax.errorbar(
            p["predicted"],
            q["predicted"],
            yerr=[q["predicted"] - q["low"], q["high"] - q["predicted"]],
            xerr=[p["predicted"] - p["low"], p["high"] - p["predicted"]],
            fmt="s",
            ms=4,
            mfc="white",
            color=colour,
            elinewidth=1,
            label=f"{predicted_label}, {name[1:]} quantile ({hdi_prob:.0%})",
        )
        ax.scatter(
            p["observed"],
            q["observed"],
            s=22,
            color="k",
            zorder=3,
            label="observed" if k == 0 else None,
            gid=f"observed {name}",
        )
    shown = p[np.isfinite(p["observed"].to_numpy(dtype=float))]
    labels = [f"{choice}={code:g}" for code in shown[choice]]
    if table.attrs["by"]:
        labels = [f"{c}, {t}" for c, t in zip(shown["condition"], labels, strict=True)]
    top = ax.secondary_xaxis("top")  # which point is which, above the panel
    top.set_xticks(shown["observed"].to_numpy(dtype=float), labels)
    top.tick_params(labelrotation=90, labelsize="x-small")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(*_quantile_range(table))
    ax.set_xlabel(f"response probability{f' (by {by})' if by else ''}")
    ax.set_ylabel(
        f"{table.attrs['time']} quantiles ({', '.join(f'{q:g}' for q in quantiles)})"
    )
    ax.set_title("quantile-probability plot", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def _quantile_range(table: pd.DataFrame) -> tuple[float, float]:
    """The y range of a quantile-probability plot: the observed and predicted
    quantiles with a margin, not the intervals, whose lapse or prior tails would
    squeeze the points into the bottom (an interval past the top runs off it)."""
    q = table[table["statistic"] != "p"]
    values = q[["observed", "predicted"]].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    margin = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
    return low - margin, high + margin


def plot_domain(
    idata: az.InferenceData,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    *,
    max_points: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Posterior draws of each simulator parameter (per group) inside the box its
    estimator was trained on. Draws piled against a bound mean the data want values
    the estimator never saw: retrain on a wider box. `bounds` defaults to the
    installed plugin's parameters."""
    bounds = dict(bounds) if bounds is not None else simulator_bounds(idata)
    names = [name for name in bounds if name in idata.posterior]
    if not names:
        raise SbiPluginsError(
            f"none of the parameters {', '.join(bounds)} is in this fit's posterior"
        )
    heights = []
    series = []
    for name in names:
        draws = idata.posterior[name]
        dims = [d for d in draws.dims if d not in ("chain", "draw")]
        if dims:
            values = draws.stack(sample=("chain", "draw")).transpose(*dims, "sample")
            labels = [str(v) for v in draws[dims[0]].values]
            values = values.values.reshape(len(labels), -1)
        else:
            labels, values = ["(pooled)"], draws.values.reshape(1, -1)
        series.append((name, labels, values))
        heights.append(0.9 + 0.32 * len(labels))
    fig, axes = plt.subplots(
        len(names), 1, figsize=(7.5, sum(heights)), squeeze=False, height_ratios=heights
    )
    rng = np.random.default_rng(seed)
    for ax, (name, labels, values) in zip(axes[:, 0], series, strict=True):
        lower, upper = bounds[name]
        margin = 0.05 * (upper - lower)
        at_edge = False
        for i, row in enumerate(values):
            shown = row[rng.choice(len(row), min(max_points, len(row)), replace=False)]
            jitter = rng.uniform(-0.25, 0.25, len(shown))
            ax.scatter(shown, i + jitter, s=4, alpha=0.35, color="tab:blue", lw=0)
            ax.plot(row.mean(), i, "|", color="k", ms=12, mew=2)
            edge = EDGE_FRACTION * (upper - lower)
            share = max(np.mean(row <= lower + edge), np.mean(row >= upper - edge))
            at_edge |= bool(share > EDGE_FRACTION)
        for side in ((lower - margin, lower), (upper, upper + margin)):
            ax.axvspan(*side, color="tab:red", alpha=0.15, lw=0)
        ax.set_xlim(lower - margin, upper + margin)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(
            f"{name}: training domain [{lower:g}, {upper:g}]"
            + ("  -- draws pile up at a bound" if at_edge else ""),
            color="tab:red" if at_edge else "k",
            fontsize="medium",
        )
    axes[-1, 0].set_xlabel("posterior draws (dots), mean (bar); red: outside the box")
    fig.tight_layout()
    return axes[:, 0]


def domain_warnings(idata: az.InferenceData) -> list[str]:
    """The training-domain warnings `fit` recorded in the attrs."""
    text = fit_attrs(idata).get("domain_warnings", "[]")
    try:
        return [str(w) for w in json.loads(text)]
    except (TypeError, ValueError):
        return [str(text)]


def estimator_check(idata: az.InferenceData) -> dict[str, object]:
    """The verdict `fit` recorded on the learned likelihood ({} when unknown) and
    the refinement's record under "refinement" where it ran."""
    attrs = fit_attrs(idata)
    try:
        check = dict(json.loads(attrs.get("estimator_check") or "{}"))
        if attrs.get("refinement"):
            check["refinement"] = json.loads(attrs["refinement"])
    except (TypeError, ValueError):
        return {}
    return check


def pooling_of(idata: az.InferenceData) -> dict[str, str]:
    """Pooling per parameter, as `fit` recorded it ({} when unknown)."""
    return per_parameter_attr(idata, "pooling")


def formulas_of(idata: az.InferenceData) -> dict[str, str]:
    """Each formula parameter's formula, as `fit` recorded it ({} for none)."""
    return per_parameter_attr(idata, "formulas")
