"""Errors a user can act on. The CLI prints their message and exits 2, no traceback."""

from __future__ import annotations

import numpy as np


class SbiPluginsError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ContractError(SbiPluginsError):
    """A plugin object breaks the plugin contract."""


class PluginError(SbiPluginsError):
    """A plugin could not be loaded, or two plugins clash."""


class DataError(SbiPluginsError, ValueError):
    """The data do not fit the simulator: missing columns, NaN, out of support."""


class EstimatorError(SbiPluginsError):
    """An estimator file is unreadable, tampered with or made for another simulator."""


class DomainWarning(UserWarning):
    """Posterior mass piles up against the estimator's training domain."""


class EstimatorWarning(UserWarning):
    """The learned likelihood's error may matter at this data size: a large fit
    left unrefined, or refinement still moving the posterior."""


def describe_rows(
    mask: np.ndarray, labels: np.ndarray | None = None, limit: int = 8
) -> str:
    """'rows 3, 17 and 2 more': which rows are bad, named by their index labels."""
    rows = np.flatnonzero(mask)
    names = [str(labels[i] if labels is not None else i) for i in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    word = "row" if len(rows) == 1 else "rows"
    return f"{word} {', '.join(names)}{more}"
