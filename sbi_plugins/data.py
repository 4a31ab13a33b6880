"""The user's table -> validated arrays: observables, group index, group labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import DataError
from sbi_plugins.likelihoods import describe_rows


@dataclass
class PreparedData:
    """Data rows in the simulator's column order, and each row's group."""

    x: np.ndarray
    group: str | None
    group_labels: np.ndarray
    group_index: np.ndarray
    row_labels: np.ndarray

    @property
    def num_groups(self) -> int:
        return len(self.group_labels)

    @property
    def group_dim(self) -> str:
        return self.group or "group"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV (or whitespace-separated) data, with a message a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read data file {str(path)!r}: no such file")
    try:
        return pd.read_csv(path, sep=None, engine="python")
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
    ) as exc:
        raise DataError(
            f"cannot read data file {str(path)!r} as CSV: {exc}".rstrip()
        ) from exc


def accept_choice_indices(simulator: Simulator, x: np.ndarray) -> np.ndarray:
    """Choices coded as 0-based indices (0/1, as many tools write them) become the
    simulator's own codes (e.g. -1/1, as HSSM writes them); a column that mixes the
    two conventions is left for the validation to reject."""
    x = x.copy()
    for j, obs in enumerate(simulator.observables):
        if obs.kind != "choice":
            continue
        values = x[:, j]
        finite = values[np.isfinite(values)]
        indices = np.arange(len(obs.codes), dtype=float)
        if np.isin(finite, obs.codes).all() or not np.isin(finite, indices).all():
            continue
        index = np.nan_to_num(values).clip(0, len(obs.codes) - 1).astype(int)
        mapped = np.asarray(obs.codes)[index]
        x[:, j] = np.where(np.isfinite(values), mapped, values)
    return x


def prepare_data(
    data: pd.DataFrame | str | Path, simulator: Simulator, group: str | None
) -> PreparedData:
    """Check the columns the simulator needs and code the groups 0..G-1 in order of
    their sorted labels (the user's labels become coordinates)."""
    frame = data if isinstance(data, pd.DataFrame) else read_table(data)
    if len(frame) == 0:
        raise DataError("the data have no rows")
    columns = [str(c) for c in frame.columns]
    missing = [o for o in simulator.observable_names if o not in frame.columns]
    if missing:
        raise DataError(
            f"column(s) {', '.join(map(repr, missing))} missing from the data; the "
            f"{simulator.name} simulator needs {', '.join(simulator.observable_names)} "
            f"(the data have {', '.join(columns)})"
        )
    labels = frame.index.to_numpy()
    x = np.empty((len(frame), len(simulator.observables)))
    for j, name in enumerate(simulator.observable_names):
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna().to_numpy() & frame[name].notna().to_numpy()
        if bad.any():
            raise DataError(
                f"column {name!r} has non-numeric values at "
                f"{describe_rows(bad, labels)}"
            )
        x[:, j] = values.to_numpy(dtype=float)
    x = accept_choice_indices(simulator, x)
    if group is None:
        return PreparedData(
            x, None, np.array(["all"]), np.zeros(len(frame), dtype=np.int64), labels
        )
    if group not in frame.columns:
        raise DataError(
            f"group column {group!r} is not in the data (the data have "
            f"{', '.join(columns)})"
        )
    groups = frame[group]
    bad = groups.isna().to_numpy()
    if bad.any():
        raise DataError(
            f"group column {group!r} is empty at {describe_rows(bad, labels)}"
        )
    codes, uniques = pd.factorize(groups, sort=True)
    return PreparedData(x, group, np.asarray(uniques), codes.astype(np.int64), labels)
