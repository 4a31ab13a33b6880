"""Draws, statistics and data -> ArviZ InferenceData with the user's labels."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import arviz as az
import numpy as np

from sbi_plugins.contract import Simulator
from sbi_plugins.data import PreparedData
from sbi_plugins.inference.nuts import STAT_DTYPES
from sbi_plugins.model.model import observation_site
from sbi_plugins.results.predictive import DISCRETE_KINDS

OBS_DIM = "__obs__"


def data_fingerprint(x: np.ndarray) -> str:
    """A hash of the observations, so `compare` can refuse fits of different data."""
    return hashlib.sha256(
        np.ascontiguousarray(x, dtype=np.float64).tobytes()
    ).hexdigest()


def _coord(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def observable_dtypes(
    simulator: Simulator, values: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Counts and choices as integers, so that `az.plot_ppc` draws bars, not a
    density of spikes; continuous values stay float. Values that are not all
    whole numbers (a choice coded 0.5, a failed simulation's NaN) stay float.
    A lazy (dask) predictive has its dtypes already and stays unread."""
    kinds = {o.name: o.kind for o in simulator.observables}
    out = {}
    for name, value in values.items():
        if hasattr(value, "__dask_graph__"):
            out[name] = value
            continue
        value = np.asarray(value)
        if (
            kinds.get(name) in DISCRETE_KINDS
            and value.dtype.kind == "f"
            and np.isfinite(value).all()
            and (value == np.round(value)).all()
        ):
            value = value.astype(np.int64)
        out[name] = value
    return out


def sample_stats_dtypes(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sampler statistics in the dtypes ArviZ expects: `az.plot_trace` and
    `plot_pair(divergences=True)` index with `diverging`, so it must be bool."""
    return {
        k: np.asarray(v).astype(STAT_DTYPES[k]) if k in STAT_DTYPES else v
        for k, v in stats.items()
    }


def build_inference_data(
    *,
    posterior: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray],
    log_likelihood: np.ndarray | None,
    posterior_predictive: dict[str, np.ndarray] | None,
    predictive_draw_index: np.ndarray | None = None,
    log_likelihood_draw_index: np.ndarray | None = None,
    data: PreparedData,
    simulator: Simulator,
    attrs: dict[str, Any],
    dims: dict[str, list[str]] | None = None,
    coords: dict[str, Any] | None = None,
    prior: dict[str, np.ndarray] | None = None,
    prior_predictive: dict[str, np.ndarray] | None = None,
    conditions: dict[str, np.ndarray] | None = None,
) -> az.InferenceData:
    """Assemble the groups DESIGN.md lists; every array is (chain, draw, ...).
    `dims`/`coords` name the dims of the posterior's (and prior's) variables;
    `prior` and `prior_predictive` fill ArviZ's groups of those names; `conditions`
    (the data's other columns, per row) join the group index in `constant_data`.
    `predictive_draw_index` / `log_likelihood_draw_index` name the posterior draws
    a thinned group kept (its `draw` coordinate)."""
    group_dim = data.group_dim
    dims = dict(dims or {})
    observed = observable_dtypes(
        simulator,
        {name: data.x[:, j] for j, name in enumerate(simulator.observable_names)},
    )
    for name in simulator.observable_names:
        dims[name] = [OBS_DIM]
    lik_name = observation_site(simulator)  # the rows' site is LOO's variable
    dims[lik_name] = [OBS_DIM]
    taken = {*posterior, *dims, lik_name}  # ArviZ's dims are by name, all groups
    kept = {k: v for k, v in (conditions or {}).items() if k not in taken}
    constant = {**kept, f"{group_dim}_idx": data.group_index}
    for name in constant:
        dims[name] = [OBS_DIM]
    all_coords = {
        group_dim: _coord(data.group_labels),
        OBS_DIM: _coord(data.row_labels),
    }
    all_coords.update({k: _coord(v) for k, v in (coords or {}).items()})
    attrs = {
        **attrs,
        "data_fingerprint": data_fingerprint(data.x),
        "inference_library": "pyro",
        "creation_library": "sbi-plugins",
    }
    attrs = {
        k: v if isinstance(v, (str, int, float)) else json.dumps(v)
        for k, v in attrs.items()
    }
    groups: dict[str, Any] = {
        "posterior": posterior,
        "sample_stats": sample_stats_dtypes(sample_stats),
        "observed_data": observed,
        "constant_data": constant,
    }
    if log_likelihood is not None:
        groups["log_likelihood"] = {lik_name: log_likelihood}
    if posterior_predictive is not None:
        groups["posterior_predictive"] = observable_dtypes(
            simulator, posterior_predictive
        )
    if prior is not None:
        groups["prior"] = prior
    if prior_predictive is not None:
        groups["prior_predictive"] = observable_dtypes(simulator, prior_predictive)
    idata = az.from_dict(**groups, coords=all_coords, dims=dims, attrs=attrs)
    # the group labels beside their index, whatever the posterior's dims are
    # (a formula's or a pooled fit's name no group)
    idata.constant_data = idata.constant_data.assign_coords(
        {group_dim: all_coords[group_dim]}
    )
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    kept = {
        "posterior_predictive": predictive_draw_index,
        "log_likelihood": log_likelihood_draw_index,
    }
    for group, index in kept.items():
        if group in idata.groups() and index is not None:
            setattr(idata, group, idata[group].assign_coords(draw=index))
            draws = idata.posterior.sizes["draw"]
            if len(index) < draws:
                idata[group].attrs["thinned"] = (
                    f"{len(index)} of {draws} draws per chain, evenly spaced (the "
                    "draw coordinate names them), to bound the result's size"
                )
    return idata


def fit_attrs(idata: az.InferenceData) -> dict[str, str]:
    """The attrs `fit` records (simulator, pooling, domain warnings, ...), which live
    on every group and survive a netCDF round trip."""
    attrs: dict[str, str] = {}
    for group in ("observed_data", "posterior"):
        if group in idata.groups():
            attrs.update(idata[group].attrs)
    return attrs


def per_parameter_attr(idata: az.InferenceData, key: str) -> dict[str, str]:
    """A recorded per-parameter attr (`pooling`, `formulas`) as a dict; {} when the
    fit has none or it is unreadable."""
    try:
        return dict(json.loads(fit_attrs(idata).get(key) or "{}"))
    except (TypeError, ValueError):
        return {}
