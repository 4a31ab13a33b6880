"""A formula parameter on its own scale: the population-level coefficients (group
terms at zero) through the link, per level of a data column, as draws that
`az.summary` reads. HSSM users read `v` per condition on the parameter's scale;
here the coefficients live on the link scale (`sbi_plugins.model.formulas`)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import torch
import xarray as xr

from sbi_plugins.contract import Parameter
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.model.formulas import link, parse_formula
from sbi_plugins.plugin.registry import get_simulator
from sbi_plugins.results.idata import fit_attrs, per_parameter_attr


def population_values(
    idata: az.InferenceData, parameter: str, by: str | None = None
) -> xr.Dataset:
    """Draws of `parameter` (one with a formula) on its own scale, for the average
    design row of each level of column `by` (all rows when None), group terms at
    zero: e.g. `az.summary(population_values(idata, "v", by="cond"))` gives the
    drift of each condition. With only categorical terms each level's design is
    exact; a numeric covariate enters at its mean within the level."""
    formulas = per_parameter_attr(idata, "formulas")
    if parameter not in formulas:
        raise SbiPluginsError(
            f"{parameter!r} has no formula in this fit (formulas: "
            f"{', '.join(formulas) or 'none'}): its values are in the posterior, "
            f"az.summary(idata, var_names=[{parameter!r}])"
        )
    box = get_simulator(fit_attrs(idata)["simulator"]).parameter(parameter)
    low, high = box.lower, box.upper
    frame = _data_frame(idata, fit_attrs(idata).get("group") or "")
    if by is not None and by not in frame:
        raise SbiPluginsError(
            f"column {by!r} is not in the fit's data; its columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    rhs = formulas[parameter].split("~", 1)[1]
    spec = parse_formula(Parameter(parameter, low, high), rhs, frame)
    rows = (
        {"all": np.ones(len(frame), dtype=bool)}
        if by is None
        else {
            str(level): (frame[by] == level).to_numpy()
            for level in sorted(frame[by].unique(), key=str)
        }
    )
    eta = 0.0
    for term in spec.common:
        coefficient = idata.posterior[f"{parameter}_{term.name}"].values
        coefficient = coefficient.reshape(*coefficient.shape[:2], -1)
        design = np.stack([term.columns[m].mean(axis=0) for m in rows.values()])
        eta = eta + np.einsum(
            "cdk,lk->cdl", coefficient, design
        )  # (chain, draw, level)
    values = link(torch.as_tensor(eta), low, high).numpy()
    dim = by or "rows"
    return xr.Dataset(
        {parameter: (("chain", "draw", dim), values)},
        coords={
            "chain": idata.posterior["chain"].values,
            "draw": idata.posterior["draw"].values,
            dim: list(rows),
        },
    )


def _data_frame(idata: az.InferenceData, group: str) -> pd.DataFrame:
    """The fit's data columns (constant_data), the group column rebuilt from its
    codes and labels, for the formula's design."""
    if "constant_data" not in idata.groups():
        raise SbiPluginsError("the fit has no constant_data: its data are not kept")
    data = idata.constant_data
    frame = pd.DataFrame(
        {
            str(name): data[name].values
            for name in data.data_vars
            if data[name].dims == data[next(iter(data.data_vars))].dims
        }
    )
    if group and f"{group}_idx" in frame:
        frame[group] = np.asarray(data[group].values)[frame.pop(f"{group}_idx")]
    return frame
