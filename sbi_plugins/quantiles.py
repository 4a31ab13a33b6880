"""Response probabilities and response-time quantiles per condition: the numbers a
decision-model user judges a fit by (the quantile-probability plot, the report's
predictive table), for the observed data and for each simulated data set.

A condition is any data column a fit kept in `constant_data` (every column that is
not an observable), or the group column. Omitted trials (response time missing)
count in a condition's trials but in no response's quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd

from sbi_plugins.errors import PluginError, SbiPluginsError
from sbi_plugins.results.idata import fit_attrs

QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
"""The RT quantiles of the field's quantile-probability plots (Ratcliff & McKoon)."""

PREDICTIVE_GROUPS = ("posterior_predictive", "prior_predictive")


def observable_kinds(idata: az.InferenceData) -> dict[str, str]:
    """count / continuous / choice per observed variable: from the plugin when it is
    installed, else read off the data (integers: counts, two values or a few codes
    beside a response time: a choice)."""
    names = [str(n) for n in idata.observed_data.data_vars]
    try:
        from sbi_plugins.plugin.registry import get_simulator

        simulator = get_simulator(fit_attrs(idata).get("simulator", ""))
        kinds = {o.name: o.kind for o in simulator.observables}
        if set(names) <= set(kinds):
            return {n: kinds[n] for n in names}
    except (PluginError, SbiPluginsError):
        pass
    kinds, distinct = {}, {}
    for name in names:
        values = np.asarray(idata.observed_data[name].values, dtype=float)
        distinct[name] = len(np.unique(values[np.isfinite(values)]))
        if distinct[name] <= 2:
            kinds[name] = "choice"
        elif np.all(values[np.isfinite(values)] % 1 == 0):
            kinds[name] = "count"
        else:
            kinds[name] = "continuous"
    if sorted(kinds.values()) == ["continuous", "count"]:
        (codes,) = [n for n, k in kinds.items() if k == "count"]
        if distinct[codes] <= MAX_CHOICES:
            kinds[codes] = "choice"
    return kinds


MAX_CHOICES = 10
"""Read off the data, at most this many integer codes beside a response time are a
choice (a race among that many accumulators), not a count."""


def response_columns(idata: az.InferenceData) -> tuple[str, str]:
    """The (choice, response time) observables of a decision-model fit."""
    kinds = observable_kinds(idata)
    choices = [n for n, k in kinds.items() if k == "choice"]
    times = [n for n, k in kinds.items() if k == "continuous"]
    if len(choices) != 1 or len(times) != 1:
        have = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise SbiPluginsError(
            "response-time quantiles need one choice and one response-time "
            f"observable; this fit has {have}"
        )
    return choices[0], times[0]


def group_labels(idata: az.InferenceData, dim: str) -> list[str] | None:
    """The labels of grouping `dim` in index order: kept beside the index in
    `constant_data` (every fit), or a posterior coordinate (older files)."""
    for group in ("constant_data", "posterior"):
        if group in idata.groups() and dim and dim in idata[group].coords:
            return [str(v) for v in idata[group].coords[dim].values]
    return None


def condition_labels(idata: az.InferenceData, by: str | None) -> np.ndarray:
    """Each data row's condition as text: the values of column `by` (kept in
    `constant_data`, or the fit's group column), or "all" for every row."""
    rows = idata.observed_data.sizes[next(iter(idata.observed_data.dims))]
    if by is None:
        return np.full(rows, "all", dtype=object)
    constant = idata.constant_data if "constant_data" in idata.groups() else None
    if constant is not None and by in constant.data_vars:
        return _as_text(np.asarray(constant[by].values))
    group = fit_attrs(idata).get("group", "")
    labels = group_labels(idata, group) if by == group else None
    if labels is not None and f"{group}_idx" in constant:
        codes = np.asarray(constant[f"{group}_idx"].values)
        return _as_text(np.asarray(labels, dtype=object)[codes])
    kept = [] if constant is None else [str(n) for n in constant.data_vars]
    raise SbiPluginsError(
        f"no column {by!r} in this fit's constant_data; conditions can be "
        f"{', '.join(c for c in kept if not c.endswith('_idx')) or 'none'}"
        f"{f' or the group {group!r}' if group else ''}"
    )


MAX_CONDITIONS = 8
"""A kept column with 2 to this many distinct values can be a condition."""


def default_condition(idata: az.InferenceData) -> str | None:
    """The column a report splits by when not told: the first kept data column
    (not the group index) with 2 to `MAX_CONDITIONS` distinct values, else None."""
    if "constant_data" not in idata.groups():
        return None
    index = f"{fit_attrs(idata).get('group') or 'group'}_idx"
    for name in idata.constant_data.data_vars:
        values = idata.constant_data[name].values
        if str(name) != index and 2 <= len(np.unique(values)) <= MAX_CONDITIONS:
            return str(name)
    return None


def _as_text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


def summarize(
    choice: np.ndarray,
    rt: np.ndarray,
    condition: np.ndarray,
    conditions: Sequence[str],
    codes: Sequence[float],
    quantiles: Sequence[float] = QUANTILES,
) -> tuple[np.ndarray, np.ndarray]:
    """Response probabilities (..., condition, response) and RT quantiles (...,
    condition, response, quantile) of data sets `choice`, `rt` (..., rows); NaN
    where a response never occurs in a condition."""
    choice, rt = np.asarray(choice, dtype=float), np.asarray(rt, dtype=float)
    lead = choice.shape[:-1]
    prob = np.full((*lead, len(conditions), len(codes)), np.nan)
    quant = np.full((*lead, len(conditions), len(codes), len(quantiles)), np.nan)
    for i, c in enumerate(conditions):
        rows = condition == c
        ch, t = choice[..., rows], rt[..., rows]
        for j, code in enumerate(codes):
            hit = ch == code
            prob[..., i, j] = hit.mean(axis=-1)
            chosen = np.where(hit & np.isfinite(t), t, np.nan)
            some = np.isfinite(chosen).any(axis=-1)
            if some.any():
                q = np.full((*lead, len(quantiles)), np.nan)
                q[some] = np.moveaxis(
                    np.nanquantile(chosen[some], quantiles, axis=-1), 0, -1
                )
                quant[..., i, j, :] = q
    return prob, quant


def quantile_table(
    idata: az.InferenceData,
    by: str | None = None,
    *,
    quantiles: Sequence[float] = QUANTILES,
    source: str = "posterior_predictive",
    hdi_prob: float = 0.94,
    max_draws: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per condition, response and statistic (`p`: the response's share of
    the condition's trials; `q0.1` ...: its RT quantiles): the observed value and
    the simulated data sets' mean and central `hdi_prob` interval. `source`:
    "posterior_predictive" or "prior_predictive" (what the priors imply)."""
    simulated = predictive_group(idata, source)
    choice, time = response_columns(idata)
    condition = condition_labels(idata, by)
    conditions = condition_order(idata, by, condition)
    observed_choice = np.asarray(idata.observed_data[choice].values, dtype=float)
    pred_choice = _flat_draws(simulated[choice].values)
    pick = pick_draws(len(pred_choice), max_draws, seed)
    pred_choice = pred_choice[pick]
    pred_time = _flat_draws(simulated[time].values)[pick]
    every_choice = np.concatenate([observed_choice, pred_choice.ravel()])
    codes = np.unique(every_choice[np.isfinite(every_choice)])
    observed = summarize(
        observed_choice,
        np.asarray(idata.observed_data[time].values, dtype=float),
        condition,
        conditions,
        codes,
        quantiles,
    )
    predicted = summarize(
        pred_choice, pred_time, condition, conditions, codes, quantiles
    )
    tail = (1 - hdi_prob) / 2
    names = ["p", *(f"q{q:g}" for q in quantiles)]
    rows = []
    for i, c in enumerate(conditions):
        for j, code in enumerate(codes):
            obs = [observed[0][i, j], *observed[1][i, j]]
            draws = [predicted[0][:, i, j], *predicted[1][:, i, j].T]
            for name, o, d in zip(names, obs, draws, strict=True):
                d = d[np.isfinite(d)]
                low, high = (
                    np.quantile(d, [tail, 1 - tail]) if len(d) else (np.nan, np.nan)
                )
                rows.append(
                    {
                        "condition": c,
                        choice: code,
                        "statistic": name,
                        "observed": o,
                        "predicted": d.mean() if len(d) else np.nan,
                        "low": low,
                        "high": high,
                    }
                )
    table = pd.DataFrame(rows)
    table.attrs.update(
        by=by or "",
        choice=choice,
        time=time,
        source=predictive_source(source),
        draws=len(pick),
    )
    return table


def omission_table(
    idata: az.InferenceData,
    by: str | None = None,
    *,
    source: str = "posterior_predictive",
    hdi_prob: float = 0.94,
    max_draws: int = 200,
    seed: int = 0,
) -> pd.DataFrame | None:
    """One row per condition: the share of trials without a response (omitted at
    a deadline), observed and in the simulated data sets (mean and central
    `hdi_prob` interval); None where neither the data nor the simulations have
    any."""
    simulated = predictive_group(idata, source)
    _, time = response_columns(idata)
    condition = condition_labels(idata, by)
    conditions = condition_order(idata, by, condition)
    observed = np.isnan(np.asarray(idata.observed_data[time].values, dtype=float))
    predicted = _flat_draws(simulated[time].values)
    predicted = np.isnan(predicted[pick_draws(len(predicted), max_draws, seed)])
    if not observed.any() and not predicted.any():
        return None
    tail = (1 - hdi_prob) / 2
    rows = []
    for c in conditions:
        here = condition == c
        rates = predicted[:, here].mean(axis=1)
        low, high = np.quantile(rates, [tail, 1 - tail])
        rows.append(
            {
                "condition": c,
                "observed": observed[here].mean(),
                "predicted": rates.mean(),
                "low": low,
                "high": high,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs.update(by=by or "", source=predictive_source(source))
    return table


def predictive_source(source: str) -> str:
    """The group `source` names: a predictive group, or "posterior"/"prior" for
    short (as a user types it)."""
    name = source if source.endswith("_predictive") else f"{source}_predictive"
    if name not in PREDICTIVE_GROUPS:
        raise SbiPluginsError(
            f"source must be one of {', '.join(PREDICTIVE_GROUPS)} (or posterior, "
            f"prior), got {source!r}"
        )
    return name


def predictive_group(idata: az.InferenceData, source: str) -> Any:
    """The simulated data sets of `source`, or an error saying how to get them."""
    source = predictive_source(source)
    if source not in idata.groups():
        raise SbiPluginsError(
            f"this fit has no {source} group; fit it with {source}=True"
        )
    return idata[source]


def source_label(source: str) -> str:
    """How plots name the simulated data sets of `source`."""
    return predictive_source(source).replace("_", " ")


def pick_draws(count: int, max_draws: int, seed: int) -> np.ndarray:
    """At most `max_draws` of `count` (chain x draw) data sets, in order, seeded."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, min(max_draws, count), replace=False))


def _flat_draws(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(-1, values.shape[-1])


def condition_order(
    idata: az.InferenceData, by: str | None, labels: np.ndarray
) -> list[str]:
    """The conditions present in `labels`, in the order they are shown: the
    group's coordinate order for the group column, else numbers in numeric order
    and then text in text order."""
    present = set(labels)
    group = fit_attrs(idata).get("group", "")
    ordered = group_labels(idata, group) if by and by == group else None
    if ordered is not None and present <= set(ordered):
        return [c for c in ordered if c in present]
    return sorted(present, key=_natural)


def _natural(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order, then the rest in text order."""
    try:
        return 0, float(label)
    except ValueError:
        return 1, label
