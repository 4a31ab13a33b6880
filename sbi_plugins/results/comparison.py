"""Rank fits of the same data by PSIS-LOO, with ArviZ's `compare`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd

from sbi_plugins.errors import SbiPluginsError


def load_fit(fit: az.InferenceData | str | Path) -> az.InferenceData:
    """An InferenceData, or one read from a netCDF file with a clear error."""
    if isinstance(fit, az.InferenceData):
        return fit
    path = Path(fit)
    if not path.is_file():
        raise SbiPluginsError(f"cannot read fit {str(path)!r}: no such file")
    try:
        return az.from_netcdf(path)
    except Exception as exc:
        raise SbiPluginsError(
            f"cannot read fit {str(path)!r}: not an InferenceData netCDF file ({exc})"
        ) from exc


def _fingerprint(name: str, idata: az.InferenceData) -> str:
    if "observed_data" not in idata.groups() or "log_likelihood" not in idata.groups():
        raise SbiPluginsError(
            f"fit {name!r} has no observed_data or log_likelihood group; compare needs "
            "fits made by sbi_plugins.fit (or with log_likelihood=True)"
        )
    stamp = idata.observed_data.attrs.get("data_fingerprint")
    if stamp:
        return stamp
    obs = idata.observed_data
    return repr({k: obs[k].values.tobytes() for k in sorted(obs.data_vars)})


def compare(
    fits: Mapping[str, az.InferenceData | str | Path], **kwargs
) -> pd.DataFrame:
    """`az.compare` over fits of the same data; fits of different data are refused,
    since their elpd values measure different things."""
    if len(fits) < 2:
        raise SbiPluginsError("compare needs at least two fits")
    loaded = {name: load_fit(fit) for name, fit in fits.items()}
    stamps = {name: _fingerprint(name, idata) for name, idata in loaded.items()}
    first = next(iter(stamps))
    differing = [name for name, stamp in stamps.items() if stamp != stamps[first]]
    if differing:
        raise SbiPluginsError(
            f"fits {', '.join(map(repr, differing))} were fitted to other data than "
            f"{first!r}; compare only fits of the same data"
        )
    with warnings.catch_warnings():
        # ArviZ 0.23 sorts in place, which pandas 3.1 deprecates: not the user's to fix.
        warnings.filterwarnings("ignore", message="The inplace keyword")
        # ArviZ warns once per fit without naming it; said below, per fit, instead
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        if kwargs.get("ic", "loo") != "loo":
            return az.compare(loaded, **kwargs)
        # PSIS-LOO once per fit, for the table and for the rows it cannot trust
        loos = {
            name: az.loo(idata, pointwise=True, scale=kwargs.get("scale"))
            for name, idata in loaded.items()
        }
        table = az.compare(loos, **kwargs)
    for name, idata in loaded.items():
        warn_unreliable_loo(name, idata, loos[name])
    return table


PARETO_K_MAX = 0.7
"""Vehtari et al.'s limit: above it a row's PSIS-LOO value is unreliable."""


STEADY = 0.01
"""The sd over the draws (nats) below which a row's log-likelihood counts as the
same at every draw: its importance weights then differ by about 1%, and its
leave-one-out value is its mean to that. A fast guess under a fixed lapse share
varies with sd 5e-4 (the model's own density at it), enough for ArviZ to give
it a large k."""


def pareto_k_rows(
    idata: az.InferenceData, loo: az.ELPDData | None = None
) -> tuple[list, list]:
    """(rows with k above 0.7, rows with a constant log-likelihood), as data-row
    labels. A row whose log-likelihood is the same at every draw (one only a
    lapse component explains) gets k = inf from ArviZ, or a k of noise where it
    varies by a hair (`STEADY`), yet its leave-one-out value is as good as exact: it is
    reported apart, not as unreliable."""
    if loo is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loo = az.loo(idata, pointwise=True)
    k = np.asarray(loo.pareto_k).ravel()
    pointwise = next(iter(idata.log_likelihood.data_vars.values()))
    values = pointwise.values.reshape(-1, k.size)  # (chain * draw, row)
    constant = np.std(values, axis=0) <= STEADY
    labels = np.asarray(pointwise.coords[pointwise.dims[-1]].values)
    bad = (k > PARETO_K_MAX) & ~constant
    return labels[bad].tolist(), labels[constant & (k > PARETO_K_MAX)].tolist()


def warn_unreliable_loo(
    name: str, idata: az.InferenceData, loo: az.ELPDData | None = None
) -> None:
    """One warning per fit whose PSIS-LOO has rows with k above 0.7, naming them."""
    bad, constant = pareto_k_rows(idata, loo)
    if not bad:
        return
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    apart = (
        f" ({len(constant)} more rows have k = inf only because their "
        "log-likelihood is the same at every draw: their LOO value is exact)"
        if constant
        else ""
    )
    remedy = (
        "This fit has a lapse component already: such rows are usually a group's "
        "fastest or slowest, which only some draws of its parameters explain "
        "(the others leave them to the lapse). Trust elpd differences well beyond "
        "their standard error only"
        if idata.attrs.get("p_outlier")
        else "If they are fast guesses or lapses, fit with p_outlier (--p-outlier 0.05)"
    )
    warnings.warn(
        f"fit {name!r}: PSIS-LOO is unreliable for {len(bad)} data rows (Pareto k "
        f"above {PARETO_K_MAX}: rows {shown}){apart}. Their elpd may be off: look "
        f"at them (az.plot_khat). {remedy}",
        RuntimeWarning,
        stacklevel=3,
    )
