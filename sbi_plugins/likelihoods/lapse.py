"""Lapses: a share `p_outlier` of trials that the simulator did not produce.

Real reaction-time data hold fast guesses and attention lapses. Under the model alone
one RT below a subject's non-decision time has probability zero, so a single fast
guess pins that subject's `t` below it (or, where no value in the box explains it,
stops the fit). HSSM and HDDM users model these trials with `p_outlier`, and so does
this module, with HSSM's semantics: every row is a mixture

    p(row) = (1 - p_outlier) * p_model(row | theta) + p_outlier * p_lapse(row)

where the lapse distribution is uniform over the observed range of each continuous
(and count) column and uniform over the choice codes. The mixture is applied per row
in the sampled model, in the pointwise log-likelihood that LOO reads and in the
posterior predictive (a lapse row is drawn from the lapse distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import SbiPluginsError

SITE = "p_outlier"
DEFAULT_PRIOR = (2.0, 38.0)
"""Beta(2, 38) when `p_outlier=True`: mean 5%, 94% of its mass below 12%; it keeps
the share away from exactly zero, where its sigmoid transform would flatten out."""


@dataclass(frozen=True)
class LapseDistribution:
    """Uniform over each column's observed range (choices: over their codes)."""

    lows: tuple[float, ...]
    highs: tuple[float, ...]
    kinds: tuple[str, ...]
    codes: tuple[tuple[float, ...], ...]

    @classmethod
    def from_data(cls, simulator: Simulator, x: np.ndarray) -> LapseDistribution:
        """From the rows with a response (omitted rows' NaN left out)."""
        x = x[np.isfinite(x).all(axis=1)]
        lows, highs = np.min(x, axis=0), np.max(x, axis=0)
        return cls(
            tuple(float(v) for v in lows),
            tuple(float(v) for v in highs),
            tuple(o.kind for o in simulator.observables),
            tuple(tuple(o.codes or ()) for o in simulator.observables),
        )

    @property
    def log_density(self) -> float:
        """The (constant) log density of every row inside the ranges."""
        total = 0.0
        for low, high, kind, codes in zip(
            self.lows, self.highs, self.kinds, self.codes, strict=True
        ):
            if kind == "choice":
                total -= math.log(len(codes))
            elif kind == "count":
                total -= math.log(high - low + 1)
            else:
                total -= math.log(max(high - low, 1e-12))
        return total

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        columns = []
        for low, high, kind, codes in zip(
            self.lows, self.highs, self.kinds, self.codes, strict=True
        ):
            if kind == "choice":
                columns.append(rng.choice(np.asarray(codes), size=n))
            elif kind == "count":
                columns.append(rng.integers(int(low), int(high) + 1, size=n))
            else:
                columns.append(rng.uniform(low, high, size=n))
        return np.stack(columns, axis=-1).astype(float)

    def describe(self) -> str:
        parts = [
            f"choice uniform over {len(codes)} codes"
            if kind == "choice"
            else f"uniform on [{low:g}, {high:g}]"
            for low, high, kind, codes in zip(
                self.lows, self.highs, self.kinds, self.codes, strict=True
            )
        ]
        return "; ".join(parts)


@dataclass(frozen=True)
class Lapse:
    """The lapse part of a model: `p_outlier` fixed (`fixed`) or given a prior, and
    the lapse distribution."""

    distribution: LapseDistribution
    fixed: float | None = None
    prior: Distribution | None = None

    def start_share(self) -> Tensor:
        """Where a sampled `p_outlier` starts: its prior's mean."""
        return torch.as_tensor(self.prior.mean, dtype=torch.float64)

    def describe_share(self) -> str:
        return (
            f"p_outlier = {self.fixed:g}"
            if self.prior is None
            else f"p_outlier ~ {_describe_prior(self.prior)}"
        )

    def describe(self) -> str:
        return f"{self.describe_share()}; lapse rows: {self.distribution.describe()}"


def _describe_prior(prior: Distribution) -> str:
    if isinstance(prior, torch.distributions.Beta):
        a, b = float(prior.concentration1), float(prior.concentration0)
        return f"Beta({a:g}, {b:g})"
    return type(prior).__name__


def make_lapse(
    p_outlier: bool | float | Distribution | None,
    simulator: Simulator,
    x: np.ndarray,
) -> Lapse | None:
    """`fit`'s `p_outlier` argument: None/False/0 none, a number fixes the share, True
    gives it the default Beta prior, a distribution on (0, 1) is its prior."""
    if (
        p_outlier is None
        or p_outlier is False
        or (isinstance(p_outlier, (int, float)) and p_outlier == 0)
    ):
        return None
    distribution = LapseDistribution.from_data(simulator, x)
    if p_outlier is True:
        a, b = (torch.tensor(v, dtype=torch.float64) for v in DEFAULT_PRIOR)
        prior = dist.Beta(a, b)
        return Lapse(distribution, prior=prior)
    if isinstance(p_outlier, Distribution):
        support = p_outlier.support
        if not (
            isinstance(support, constraints.interval)
            and float(support.lower_bound) >= 0
            and float(support.upper_bound) <= 1
        ):
            raise SbiPluginsError(
                "the prior of p_outlier must live on (0, 1), e.g. "
                f"pyro.distributions.Beta(2, 38); got {type(p_outlier).__name__} "
                f"with support {support}"
            )
        return Lapse(distribution, prior=p_outlier)
    try:
        share = float(p_outlier)
    except (TypeError, ValueError):
        share = math.nan
    if not 0 < share < 1:
        raise SbiPluginsError(
            f"p_outlier must be a share in (0, 1) such as 0.05, True (estimate it), "
            f"or a prior on (0, 1); got {p_outlier!r}"
        )
    return Lapse(distribution, fixed=share)


def mix(
    model_log_prob: Tensor,
    lapse_log_density: float,
    share: Tensor,
    omitted: Tensor | None = None,
) -> Tensor:
    """log((1 - p) p_model + p p_lapse), per row; `share` broadcasts from the left
    (one value per draw, or a scalar). `omitted` rows (no response by a deadline)
    get log((1 - p) P_model(omission)): a lapse is a response drawn from the lapse
    distribution, which lies before the deadline, so it never explains an
    omission."""
    share = share.to(model_log_prob.dtype)
    while share.dim() and share.dim() < model_log_prob.dim():
        share = share.unsqueeze(-1)
    kept = torch.log1p(-share) + model_log_prob
    mixed = torch.logaddexp(kept, torch.log(share) + lapse_log_density)
    return mixed if omitted is None else torch.where(omitted, kept, mixed)


class LapseMixture(dist.TorchDistribution):
    """The rows' distribution with lapses: `rows` (the model's) mixed per row with
    the lapse distribution."""

    arg_constraints: dict = {}

    def __init__(
        self,
        rows: Distribution,
        share: Tensor,
        lapse_log_density: float,
        omitted: Tensor | None = None,
    ):
        self.rows, self.share, self.lapse_log_density = rows, share, lapse_log_density
        self.omitted = omitted
        super().__init__(rows.batch_shape, rows.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.real, 1)

    def log_prob(self, x: Tensor) -> Tensor:
        return mix(
            self.rows.log_prob(x), self.lapse_log_density, self.share, self.omitted
        )


def share_draws(
    lapse: Lapse | None, posterior: dict[str, np.ndarray], shape: tuple[int, int]
) -> np.ndarray | None:
    """`p_outlier` per (chain, draw): the posterior's, or the fixed value."""
    if lapse is None:
        return None
    if lapse.prior is None:
        return np.full(shape, lapse.fixed)
    return posterior[SITE]


def apply_to_simulations(
    sims: np.ndarray,
    share: np.ndarray,
    distribution: LapseDistribution,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replace each simulated row by a lapse row with its draw's probability;
    `sims` is (draws, rows, observables), `share` (draws,)."""
    lapsed = rng.uniform(size=sims.shape[:2]) < share[:, None]
    count = int(lapsed.sum())
    if count:
        sims = sims.copy()
        sims[lapsed] = distribution.sample(count, rng)
    return sims
