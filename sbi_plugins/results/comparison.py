"""Rank fits of the same data by PSIS-LOO, with ArviZ's `compare`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import arviz as az
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
        return az.compare(loaded, **kwargs)
