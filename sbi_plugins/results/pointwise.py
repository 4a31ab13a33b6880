"""The pointwise log-likelihood: one value per draw and data row, what PSIS-LOO
(`az.loo`, `az.compare`) reads."""

from __future__ import annotations

import numpy as np
import torch

from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.likelihoods.lapse import Lapse, mix
from sbi_plugins.likelihoods.omission import Omissions
from sbi_plugins.results.predictive import draw_batches, predictive_draws

LOG_LIKELIHOOD_VALUES = 50_000_000
"""At most this many pointwise log-likelihood values (draws x rows, 200 MB in
float32), unless asked: beyond it the group keeps evenly spaced draws of each chain.
A 37,200-trial fit's 4 x 1000 draws would be 149 million values (595 MB, 499 MiB
compressed on disk); it keeps 336 draws per chain (168 MiB), whose PSIS-LOO has a
Monte Carlo sd of 0.7 elpd against a LOO se of 171 (`elpd_monte_carlo_sd`,
benchmarks/result_size.py)."""


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


def check_log_likelihood_draws(request: bool | int) -> None:
    """`fit(log_likelihood_draws=...)` is True or a number of draws per chain,
    refused before any work otherwise."""
    if request is True or (
        isinstance(request, int) and not isinstance(request, bool) and request >= 1
    ):
        return
    raise SbiPluginsError(
        f"log_likelihood_draws must be True (at most {LOG_LIKELIHOOD_VALUES:,} "
        f"values) or a number of draws per chain (at least 1), got {request!r}"
    )


def log_likelihood_draw_index(
    request: bool | int, shape: tuple[int, int], num_rows: int
) -> np.ndarray:
    """Which draws (the same in every chain) keep their pointwise log-likelihood:
    True: all of them up to `LOG_LIKELIHOOD_VALUES` values, evenly thinned beyond;
    a number: that many per chain."""
    return predictive_draws(request, shape, num_rows, budget=LOG_LIKELIHOOD_VALUES)


PAIRED_FROM = 2000
"""Draws in all (chains x draws) from which the default log-likelihood keeps the
same draws as the default posterior predictive, so that `az.loo_pit` and
`az.plot_loo_pit` (which pair each simulated row with its draw's weight) read the
fit as it is; fewer draws than this would make PSIS-LOO's tail fits noisy, so a
thinner predictive (large data) keeps its own draws, a subset of the
log-likelihood's (`idata.log_likelihood.sel(draw=idata.posterior_predictive.draw)`
pairs them)."""


def pointwise_draws(
    predictive: bool | int,
    log_likelihood: bool | int,
    shape: tuple[int, int],
    num_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Which draws (the same in every chain) the posterior predictive and the
    pointwise log-likelihood keep, each by its own request and budget, the
    predictive's chosen among the log-likelihood's wherever they fit, and both the
    same when both are the defaults and the predictive keeps `PAIRED_FROM` draws."""
    kept = log_likelihood_draw_index(log_likelihood, shape, num_rows)
    selected = predictive_draws(predictive, shape, num_rows)
    if 0 < len(selected) < len(kept):
        among = predictive_draws(len(selected), (shape[0], len(kept)), num_rows)
        selected = kept[among]
    paired = predictive is True and log_likelihood is True
    if paired and shape[0] * len(selected) >= PAIRED_FROM:
        kept = selected
    return selected, kept


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


def elpd_monte_carlo_sd(log_likelihood: np.ndarray) -> float:
    """The Monte Carlo sd of PSIS-LOO's elpd from these draws `(chain, draw, row)`:
    each row's elpd is minus the log of the mean importance ratio 1/p(row | draw)
    (delta method, draws taken as independent, as evenly thinned draws nearly are),
    summed over rows as independent. What thinning the group costs: compare it with
    LOO's own se (the data's sampling error) or with an elpd difference."""
    flat = log_likelihood.reshape(-1, log_likelihood.shape[-1])
    variance = 0.0
    for start in range(0, flat.shape[1], 4096):
        ll = flat[:, start : start + 4096].astype(np.float64)
        ratios = np.exp(ll.min(axis=0) - ll)  # scaled per row: no overflow
        cv = ratios.std(axis=0) / ratios.mean(axis=0)
        variance += float((cv**2).sum()) / len(flat)
    return float(np.sqrt(variance))
