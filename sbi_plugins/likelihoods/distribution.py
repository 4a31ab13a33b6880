"""A trained estimator as a Pyro distribution, guarded by its training domain.

Built on `sbi.utils.pyroutils.to_pyro_distribution`. The guard matters: a learned
likelihood is only defined where it was trained, and outside that box the network
extrapolates without warning. So parameters outside the box get log-prob -inf (NUTS
rejects them), and observations outside the support seen in training raise an error
before any sampling starts.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable

import numpy as np
import pyro.distributions as dist
import torch
from sbi.utils.pyroutils import to_pyro_distribution
from torch.distributions import constraints

from sbi_plugins.contract import Observable, Simulator
from sbi_plugins.data import DEADLINE_HINT, decision_columns
from sbi_plugins.errors import DataError, SbiPluginsError, describe_rows
from sbi_plugins.estimators import grouped, reduction
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.estimators.sbi_internals import check_sbi_internals, sbi_version
from sbi_plugins.likelihoods.omission import (
    Omissions,
    clamp_log_probability,
    log_decision_probability,
    log_omission_probability,
    time_frame,
)


def encode_choices(simulator: Simulator, x: torch.Tensor) -> torch.Tensor:
    """Choice codes (e.g. -1/1) become the category indices (0/1) estimators use."""
    columns = []
    for j, obs in enumerate(simulator.observables):
        column = x[..., j]
        if obs.kind == "choice":
            codes = torch.tensor(obs.codes, dtype=x.dtype)
            column = (column[..., None] == codes).float().argmax(-1).to(x.dtype)
        columns.append(column)
    return torch.stack(columns, dim=-1)


def check_observations(
    simulator: Simulator,
    estimator: TrainedEstimator | None,
    x: np.ndarray,
    labels: np.ndarray | None = None,
) -> None:
    """Raise a DataError naming the rows whose values the likelihood cannot score:
    outside the observable's support, or (for a learned one) outside what training
    ever produced."""
    for j, obs in enumerate(simulator.observables):
        column = np.asarray(x[:, j], dtype=float)
        bad = ~np.isfinite(column)
        if bad.any():
            hint = ""
            if obs.kind == "continuous" and _is_decision_model(simulator):
                hint = f"; {DEADLINE_HINT}"
            raise DataError(
                f"column {obs.name!r} has missing or non-finite values at "
                f"{describe_rows(bad, labels)}; drop or fix those rows{hint}"
            )
        if obs.kind == "count":
            bad = (column < 0) | (column != np.round(column))
            if bad.any():
                raise DataError(
                    f"column {obs.name!r} holds counts, but has negative or "
                    f"non-integer values at {describe_rows(bad, labels)}"
                )
        elif obs.kind == "choice":
            indices = np.arange(len(obs.codes))
            # the rows off the convention the column mostly follows
            bad = min(~np.isin(column, obs.codes), ~np.isin(column, indices), key=sum)
            if bad.any():
                codes = ", ".join(f"{c:g}" for c in obs.codes)
                if not np.array_equal(obs.codes, indices):
                    codes += f" (or 0-based indices {', '.join(map(str, indices))})"
                found = ", ".join(f"{v:g}" for v in np.unique(column[bad])[:5])
                raise DataError(
                    f"column {obs.name!r} accepts codes {codes}; found {found} at "
                    f"{describe_rows(bad, labels)}" + _shifted_codes_hint(obs, column)
                )
        bad = (column < obs.lower) | (column > obs.upper)
        if obs.kind == "continuous":
            bad = (column <= obs.lower) | (column >= obs.upper)
        if bad.any():
            raise DataError(
                f"column {obs.name!r} must lie in ({obs.lower:g}, {obs.upper:g}); "
                f"values outside at {describe_rows(bad, labels)}"
            )
        if estimator is None or obs.kind == "choice":
            continue
        low, high = estimator.support[obs.name]
        bad = (column < low) | (column > high)
        if bad.any():
            outside = (
                f"column {obs.name!r}: values at {describe_rows(bad, labels)} lie "
                f"outside [{low:g}, {high:g}], the range the {simulator.name} "
                "estimator saw in training, so it cannot score them"
            )
            if np.median(column) > high:  # the whole column is off: its units
                raise DataError(
                    f"{outside}. Most values lie above that range: are they in "
                    f"milliseconds? Convert to seconds (df[{obs.name!r}] / 1000)"
                )
            raise DataError(
                f"{outside}; check the data, or retrain on a wider parameter "
                "domain (`sbi-plugins train`)"
            )


def _is_decision_model(simulator: Simulator) -> bool:
    try:
        decision_columns(simulator)
    except SbiPluginsError:
        return False
    return True


def _shifted_codes_hint(obs: Observable, column: np.ndarray) -> str:
    """A choice column coded 1..K (HDDM's and many labs' habit), or -1..K-2 (a
    race coded like the DDM's -1/1), is the 0-based indices shifted: say how the
    codes map, so the user recodes knowingly."""
    k = len(obs.codes)
    values = np.unique(column)
    shift = values.max() - (k - 1)
    shifted = np.arange(k) + shift
    if shift == 0 or not (np.isin(values, shifted).all() and shifted[-1] in values):
        return ""
    mapping = ", ".join(
        f"{s:g} -> {c:g}" for s, c in zip(shifted, obs.codes, strict=True)
    )
    recode = f"df[{obs.name!r}] {'-' if shift > 0 else '+'} {abs(shift):g}"
    return (
        f". Coded {shifted[0]:g} to {shifted[-1]:g}? Read in order they would mean "
        f"{mapping}: check which response is which, then recode ({recode} gives "
        "the 0-based indices)"
    )


class GuardedDistribution(dist.TorchDistribution):
    """log p(x | theta), -inf where theta leaves the training box.

    `score(theta, x)` does the work; theta is clamped into the box before it is
    scored so the network never sees (and never propagates NaN from) the outside.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        theta: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        event_shape: torch.Size,
        check: Callable[[torch.Tensor], None] | None = None,
        sampler: Callable[[torch.Tensor, torch.Size], torch.Tensor] | None = None,
    ):
        self.theta, self.low, self.high = theta, low, high
        self._score, self._check, self._sampler = score, check, sampler
        self.inside = ((theta >= low) & (theta <= high)).all(-1)
        super().__init__(theta.shape[:-1], event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.real, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self._check is not None and not torch.jit.is_tracing():
            self._check(x)
        safe = torch.minimum(torch.maximum(self.theta, self.low), self.high)
        lp = self._score(safe, x)
        return torch.where(self.inside, lp, torch.full_like(lp, -math.inf))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if self._sampler is None:
            raise NotImplementedError("this likelihood cannot sample")
        return self._sampler(self.theta, torch.Size(sample_shape))

    def expand(self, batch_shape, _instance=None):
        theta = self.theta.expand(*batch_shape, self.theta.shape[-1])
        return GuardedDistribution(
            self._score,
            theta,
            self.low,
            self.high,
            self.event_shape,
            self._check,
            self._sampler,
        )


class GroupedRows(dist.TorchDistribution):
    """Data rows whose parameters are their group's: `theta` is `(groups, params)`,
    `group_index` maps each row to its group. Scoring goes through
    `Likelihood.log_prob_grouped`, which may evaluate the network once per group
    rather than once per row; a group outside the training box scores -inf.
    `omissions`: rows scored by their probability of no response by a deadline."""

    arg_constraints: dict = {}

    def __init__(
        self,
        likelihood: Likelihood,
        theta: torch.Tensor,
        group_index: torch.Tensor,
        omissions: Omissions | None = None,
    ):
        self.likelihood, self.theta, self.group_index = likelihood, theta, group_index
        self.omissions = omissions
        low, high = likelihood.low.to(theta.dtype), likelihood.high.to(theta.dtype)
        self.inside = ((theta >= low) & (theta <= high)).all(-1)[..., group_index]
        self.safe = torch.minimum(torch.maximum(theta, low), high)
        super().__init__(group_index.shape, likelihood.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.real, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = self.likelihood.log_prob_grouped(
            self.safe, self.group_index, x, self.omissions
        )
        return torch.where(self.inside, lp, torch.full_like(lp, -math.inf))


TAIL_TOLERANCE = 0.02
"""Largest gap in omission probability between the flow's tail and the integrated
density: the two differ by the learned mass below the quadrature's lower end
(under 0.005 for the shipped DDM); a reversed map is off by ~1."""


def _verified(
    fast: Callable[[], torch.Tensor],
    reference: Callable[[], torch.Tensor],
    mismatch: Callable[[torch.Tensor, torch.Tensor], str | None],
    what: str,
    fallback: str,
) -> bool:
    """Whether a fast path gives its reference's numbers on a self-check's points
    (`mismatch` says how they differ, None where they agree). Where it does not,
    or raises (an sbi/nflows internal changed), a warning says `what` differs and
    why, and that the caller falls back to `fallback`."""
    try:
        with torch.no_grad():
            reason = mismatch(fast(), reference())
        if reason is None:
            return True
    except Exception as exc:  # an sbi/nflows internal changed
        reason = f"it failed with {type(exc).__name__}: {exc}"
    warnings.warn(f"{what} ({reason}); {fallback} (same numbers, slower)", stacklevel=4)
    return False


def _mismatch(fast: torch.Tensor, slow: torch.Tensor) -> str | None:
    """How a fast path's log-probabilities differ from sbi's, in a few words; None
    where they agree (within 1e-4)."""
    fast = fast.double()
    if fast.shape == slow.shape and torch.allclose(fast, slow, rtol=1e-4, atol=1e-4):
        return None
    if fast.shape != slow.shape:
        return f"shape {tuple(fast.shape)} instead of {tuple(slow.shape)}"
    if torch.isnan(fast).any():
        return "NaN in its log-probability"
    finite = torch.isfinite(fast)
    if not torch.equal(finite, torch.isfinite(slow)):
        return "infinite where sbi's is finite, or the reverse"
    error = float((fast - slow)[finite].abs().max()) if finite.any() else 0.0
    return f"off by up to {error:.3g} in log-probability"


def _probability_mismatch(tail: torch.Tensor, quadrature: torch.Tensor) -> str | None:
    """How far two log-probabilities are apart as probabilities, where more than
    `TAIL_TOLERANCE`; None where they agree."""
    error = float((tail.exp() - quadrature.exp()).abs().max())
    return (
        None if error < TAIL_TOLERANCE else f"off by up to {error:.2g} in probability"
    )


def _frozen(net: torch.nn.Module) -> torch.nn.Module:
    """A copy without weight gradients: inference never needs them, NUTS's JIT
    cannot trace weights that require them, and backward passes get cheaper."""
    frozen = copy.deepcopy(net).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


class Likelihood:
    """`theta -> Pyro distribution over one data row`, learned or exact.

    Call it inside your own Pyro model, as the EuroSciPy 2025 talk's `SBItoPyro` did:
    `pyro.sample("x", lik(theta), obs=x)`. Theta has shape `(..., n_parameters)`, x
    `(..., n_observables)` in the data's own codes.
    """

    def __init__(self, simulator: Simulator, estimator: TrainedEstimator | None = None):
        self.simulator = simulator
        self.estimator = estimator
        self.exact = estimator is None
        self._net = None if self.exact else _frozen(estimator.net)
        if self.exact and simulator.log_likelihood is None:
            raise SbiPluginsError(
                f"simulator {simulator.name!r} has no exact log-likelihood; use the "
                "neural one"
            )
        self.low = torch.tensor(simulator.lower, dtype=torch.float64)
        self.high = torch.tensor(simulator.upper, dtype=torch.float64)
        self.event_shape = torch.Size([len(simulator.observables)])
        self._checked: dict[int, tuple[weakref.ref, int]] = {}
        if not self.exact:
            check_sbi_internals()
        self._network = {} if self.exact else estimator.metadata["network"]
        self._grouped = None if self.exact else self._choose_grouped_path()
        self._omission_tail: bool | None = None
        """Omissions from the flow's tail (True) or by quadrature; None: not yet
        decided (decided on first use, so fits without a deadline never pay)."""

    @property
    def name(self) -> str:
        return "exact" if self.exact else "neural"

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | theta) for theta inside the box, broadcasting leading dims."""
        if self.exact:
            return self.simulator.log_likelihood(theta, x.to(theta.dtype))
        batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[:-1])
        theta = theta.expand(*batch, theta.shape[-1])
        x = encode_choices(self.simulator, x.expand(*batch, x.shape[-1]))
        x, valid, log_jacobian = reduction.transform_values(self._network, theta, x)
        base = to_pyro_distribution(self._net, theta.float())
        lp = base.log_prob(x.float()).to(theta.dtype) + log_jacobian
        return torch.where(valid, lp, torch.full_like(lp, -math.inf))

    def log_prob_grouped(
        self,
        theta: torch.Tensor,
        group_index: torch.Tensor,
        x: torch.Tensor,
        omissions: Omissions | None = None,
    ) -> torch.Tensor:
        """log p(row | its group's theta) for `theta` of shape `(..., groups, P)`.

        Where the estimator allows (one count; MNLE with one continuous value) the
        network runs once per group rather than once per row: same numbers, a
        fraction of the cost (see `sbi_plugins.estimators.grouped`). `omissions`:
        those rows score log P(no response by their deadline), once per (group,
        deadline) (see `sbi_plugins.likelihoods.omission`).
        """
        if omissions is not None:
            decided = x[omissions.decided]
            if self._uses_flow_tail():  # the decided rows and tails in one pass
                scores = self._flow_scores(
                    theta,
                    group_index[omissions.decided],
                    decided,
                    omissions.pair_cell,
                    omissions.pair_deadline,
                )
                count = len(omissions.pair_cell)
                return omissions.combine(
                    scores[..., :-count], clamp_log_probability(scores[..., -count:])
                )
            lp = self.log_prob_grouped(theta, group_index[omissions.decided], decided)
            pairs = theta[..., omissions.pair_cell, :]
            omitted = self.log_omitted(pairs, omissions.pair_deadline)
            return omissions.combine(lp, omitted.to(lp.dtype))
        if self._grouped is not None:
            encoded = encode_choices(self.simulator, x.to(theta.dtype))
            lp = self._grouped(self._net, theta, group_index, encoded, self._network)
            return lp.to(theta.dtype)
        return self.log_prob(theta[..., group_index, :], x)

    def log_omitted(self, theta: torch.Tensor, deadline: torch.Tensor) -> torch.Tensor:
        """log P(no response by `deadline` | theta), `theta` `(..., n, P)` and
        `deadline` `(n,)`, from this likelihood's own density: the flow's exact
        tail where the per-group MNLE path allows, else the density integrated by
        quadrature (`sbi_plugins.likelihoods.omission`)."""
        if self._uses_flow_tail():
            index = torch.arange(len(deadline))
            empty = torch.zeros(0, 2, dtype=theta.dtype)
            return clamp_log_probability(
                self._flow_scores(theta, index[:0], empty, index, deadline)
            )
        return log_omission_probability(
            log_decision_probability(self.log_prob, self.simulator, theta, deadline)
        )

    def _uses_flow_tail(self) -> bool:
        if self._omission_tail is None:
            self._omission_tail = self._choose_omission_path()
        return self._omission_tail

    def _flow_scores(
        self,
        theta: torch.Tensor,
        group_index: torch.Tensor,
        x: torch.Tensor,
        pair_group: torch.Tensor,
        deadline: torch.Tensor,
    ) -> torch.Tensor:
        """The densities of rows `x` (their groups' theta), then per (group,
        deadline) pair log P(no response by the deadline): the sum over choices of
        P(choice) P(time > deadline | choice) from the flow's upper tail, in one
        pass through the networks (no subtraction from 1: small omission
        probabilities keep their digits)."""
        time_column, choice_column = decision_columns(self.simulator)
        codes = self.simulator.observables[choice_column].codes
        pairs, choices = len(deadline), len(codes)
        tails = torch.zeros(pairs * choices, 2, dtype=theta.dtype)
        tails[:, time_column] = deadline.to(theta.dtype).repeat_interleave(choices)
        tails[:, choice_column] = torch.tensor(codes, dtype=theta.dtype).repeat(pairs)
        rows = encode_choices(self.simulator, torch.cat([x.to(theta.dtype), tails]))
        index = torch.cat([group_index, pair_group.repeat_interleave(choices)])
        scores = grouped.mnle_log_prob(
            self._net, theta, index, rows, self._network, tails=len(tails)
        ).to(theta.dtype)
        per_choice = scores[..., len(x) :].reshape(*scores.shape[:-1], pairs, choices)
        return torch.cat(
            [scores[..., : len(x)], torch.logsumexp(per_choice, dim=-1)], dim=-1
        )

    def _choose_omission_path(self) -> bool:
        """Whether the flow's tail gives this estimator's omission probabilities:
        it must agree with the integrated density at random points (a flow that
        maps time the other way round, or a changed internal, would not)."""
        if self._grouped is not grouped.mnle_log_prob:
            return False
        theta = self._box_points(4, seed=1)
        time_column, _ = decision_columns(self.simulator)
        onset, log_scale = time_frame(self.simulator, theta, time_column)
        deadline = onset + log_scale.exp() * torch.tensor([0.05, 0.3, 1.0, 3.0])
        index = torch.arange(len(deadline))
        empty = torch.zeros(0, 2, dtype=theta.dtype)
        return _verified(
            lambda: self._flow_scores(theta, index[:0], empty, index, deadline),
            lambda: log_omission_probability(
                log_decision_probability(self.log_prob, self.simulator, theta, deadline)
            ),
            _probability_mismatch,
            f"{self.simulator.name}: the flow's tail does not reproduce the "
            "integrated density",
            "omission probabilities by quadrature",
        )

    def _box_points(self, count: int, seed: int) -> torch.Tensor:
        """`count` parameter vectors drawn uniformly in the box, for self-checks."""
        gen = torch.Generator().manual_seed(seed)
        return self.low + (self.high - self.low) * torch.rand(
            count, len(self.low), generator=gen, dtype=torch.float64
        )

    def _choose_grouped_path(self):
        """The per-group path for this estimator, if it gives row-by-row numbers on
        a random check (a changed sbi internal would fail here, not silently); where
        it does not, the warning says why and scoring goes row by row."""
        kind = self.estimator.kind
        if kind == "categorical" and len(self.simulator.observables) == 1:
            candidate = grouped.count_log_prob
        elif kind == "mnle" and grouped.supports_mnle(self._net):
            candidate = grouped.mnle_log_prob
        else:
            return None
        theta = self._box_points(3, seed=0)
        index = torch.tensor([0, 1, 2, 1, 0, 2])
        rng = np.random.default_rng(0)
        x = torch.as_tensor(
            self.simulator.simulate(theta[index].numpy(), rng), dtype=torch.float64
        )
        agrees = _verified(
            lambda: candidate(
                self._net,
                theta,
                index,
                encode_choices(self.simulator, x),
                self._network,
            ),
            lambda: self.log_prob(theta[index], x),
            _mismatch,
            f"{self.simulator.name}: the per-group scoring path does not reproduce "
            f"sbi's log_prob with sbi {sbi_version()}",
            "scoring row by row",
        )
        return candidate if agrees else None

    def rows(
        self,
        theta: torch.Tensor,
        group_index: torch.Tensor,
        omissions: Omissions | None = None,
    ) -> GroupedRows:
        """The distribution of all data rows given per-group parameters."""
        return GroupedRows(self, theta, group_index, omissions)

    def _check(self, x: torch.Tensor) -> None:
        """Check observations once per tensor (NUTS scores the same data thousands
        of times). Remembered by a weak reference to the very tensor and its
        version counter: a freed tensor's address or id, reused by new data, can
        never match, and an in-place change is checked again."""
        seen = self._checked.get(id(x))
        if seen is not None and seen[0]() is x and seen[1] == x._version:
            return
        flat = x.detach().reshape(-1, x.shape[-1]).cpu().numpy()
        check_observations(self.simulator, self.estimator, flat)
        self._checked = {k: v for k, v in self._checked.items() if v[0]() is not None}
        self._checked[id(x)] = (weakref.ref(x), x._version)

    def _sample(self, theta: torch.Tensor, sample_shape: torch.Size) -> torch.Tensor:
        """Draws come from the simulator itself, not from the network."""
        n = int(np.prod(sample_shape)) if len(sample_shape) else 1
        flat = theta.detach().reshape(-1, theta.shape[-1]).cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        x = self.simulator.simulate(
            np.repeat(flat[None], n, 0).reshape(-1, flat.shape[1]), rng
        )
        shape = (*sample_shape, *theta.shape[:-1], x.shape[-1])
        return torch.as_tensor(np.asarray(x), dtype=theta.dtype).reshape(shape)

    def __call__(self, theta: torch.Tensor) -> GuardedDistribution:
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.double()
        return GuardedDistribution(
            self.log_prob,
            theta,
            self.low.to(theta.dtype),
            self.high.to(theta.dtype),
            self.event_shape,
            check=self._check,
            sampler=self._sample,
        )


def likelihood(
    simulator: Simulator | str,
    estimator: TrainedEstimator | str | None = None,
    *,
    exact: bool = False,
    progress: bool = True,
) -> Likelihood:
    """The learned (or, with `exact=True`, the plugin's exact) likelihood of a
    simulator as `theta -> Pyro distribution`, guarded by the training domain."""
    from sbi_plugins.estimators import resolve_estimator
    from sbi_plugins.plugin.registry import get_simulator

    simulator = get_simulator(simulator)
    if exact:
        return Likelihood(simulator)
    return Likelihood(
        simulator, resolve_estimator(simulator, estimator, progress=progress)
    )
