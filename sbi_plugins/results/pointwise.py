"""The pointwise log-likelihood: one value per draw and data row, what PSIS-LOO
(`az.loo`, `az.compare`) reads."""

from __future__ import annotations

import numpy as np
import torch

from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import Lapse, mix
from sbi_plugins.likelihoods.omission import Omissions
from sbi_plugins.results.predictive import draw_batches


def pointwise_dtype(request: bool | str) -> type[np.floating] | None:
    """What `fit(log_likelihood=...)` asks for: float32 (True: PSIS-LOO needs
    differences of a few nats, not 16 digits), float64, or no group (False)."""
    if request is True or request == "float32":
        return np.float32
    if request == "float64":
        return np.float64
    if request is False:
        return None
    raise SbiPluginsError(
        f"log_likelihood must be True (float32), 'float64' or False, got {request!r}"
    )


def pointwise_log_likelihood(
    lik: Likelihood,
    theta: np.ndarray,
    x: np.ndarray,
    cell_index: np.ndarray,
    lapse: Lapse | None = None,
    share: np.ndarray | None = None,
    dtype: type[np.floating] = np.float32,
    omissions: Omissions | None = None,
) -> np.ndarray:
    """log p(row | its cell's parameters) for every draw and row, `theta` of shape
    `(chain, draw, cell, parameter)`, mixed with the lapse distribution at each
    draw's `p_outlier` where the model has lapses. Scored per cell where the
    likelihood allows (the networks run once per draw and cell, not once per draw
    and row), in batches of draws, computed in float64 and stored as `dtype`.
    `omissions`' rows score their probability of no response by the deadline."""
    chains, draws = theta.shape[:2]
    flat = theta.reshape(chains * draws, *theta.shape[2:])
    rows = torch.as_tensor(x, dtype=torch.float64)
    index = torch.as_tensor(cell_index)
    out = np.empty((chains * draws, len(x)), dtype=dtype)
    with torch.no_grad():
        for batch in draw_batches(len(flat), len(x)):
            cells = torch.as_tensor(flat[batch], dtype=torch.float64)
            lp = lik.log_prob_grouped(cells, index, rows, omissions)
            if lapse is not None:
                shares = torch.as_tensor(share.reshape(-1)[batch])
                omitted = None if omissions is None else omissions.mask
                lp = mix(lp, lapse.distribution.log_density, shares, omitted)
            out[batch] = lp.numpy()
    return out.reshape(chains, draws, len(x))
