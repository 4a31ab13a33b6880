"""`sbi-plugins check SIM`: validate a registered simulator for its author.

Three sections of checks, each `pass`, `warn`, `fail` or `skip`:

- contract: `simulate` over a batch drawn from the training prior returns one row
  per parameter row and one numeric column per observable, inside the declared
  support, the same output for the same seed, and few NaN or infinite values; the
  exact log-likelihood, where there is one, is finite and differentiable on them;
- estimator: the resolved estimator (`--estimator FILE`, else the one the plugin
  ships, else the cached one) was trained for this simulator (name, version,
  parameters, domain, observables); its log-likelihood of fresh simulations is as
  good as in training (both in the network's space, after any shift or scale);
  where an exact likelihood exists, its error against it;
- calibration: simulation-based calibration (SBC) of the non-hierarchical model:
  data sets drawn from the pooled prior, each fitted with NUTS, and the ranks of
  the true parameters among the posterior draws tested for uniformity.

A failed check makes the report fail (exit status 1 on the command line); warnings
do not. The thresholds are module constants, documented in docs/writing-a-plugin.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import DomainWarning, EstimatorError, PluginError
from sbi_plugins.likelihoods import reduction
from sbi_plugins.plugin.registry import get_registry

if TYPE_CHECKING:
    from sbi_plugins.estimators.artifact import TrainedEstimator

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
EXIT_FAILED = 1
"""Exit status of `sbi-plugins check` when a check fails (2 stays a usage error)."""

MAX_INVALID_FRACTION = 0.01
"""More NaN or infinite simulations than this fails; fewer only warns (training drops
them, which conditions the learned likelihood on a valid output)."""
HELDOUT_MARGIN = 0.1
"""Nats per trial the held-out log-likelihood may fall below the training validation
value (beyond 4 standard errors) before the estimator counts as stale."""
MAX_LOG_ERROR = 0.1
"""Mean absolute error (nats per trial) of the learned against the exact
log-likelihood on fresh simulations above which the estimator fails."""
EXACT_MARGIN = 0.01
"""KL(exact || learned) is never negative; an estimate below -(this + 4 standard
errors) means the exact likelihood does not describe the simulator."""
SBC_ALPHA = 0.01
"""Family-wise false-alarm rate of the SBC uniformity tests (Bonferroni over two
tests per parameter): a well-calibrated fit fails one run in a hundred."""


@dataclass
class Check:
    """One line of the report."""

    section: str
    name: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """All checks of one simulator; `ok` when none failed."""

    simulator: str
    version: str
    plugin: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(
        self, section: str, name: str, status: str, message: str, **values: Any
    ) -> Check:
        check = Check(section, name, status, message, values)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (NaN and infinities become null), for CI."""
        return _plain(
            {
                "simulator": self.simulator,
                "version": self.version,
                "plugin": self.plugin,
                "ok": self.ok,
                "failed": [f"{c.section}/{c.name}" for c in self.failed],
                "seconds": round(self.seconds, 2),
                "checks": [dataclasses.asdict(c) for c in self.checks],
            }
        )

    def format(self) -> str:
        """The readable report: one line per check, grouped by section."""
        lines = [
            f"sbi-plugins check {self.simulator} (version {self.version}, "
            f"{self.plugin})"
        ]
        section = None
        for c in self.checks:
            if c.section != section:
                section = c.section
                lines.append(f"\n{section}")
            lines.append(f"  {c.status.upper():<5} {c.name}: {c.message}")
        counts = {s: sum(c.status == s for c in self.checks) for s in (WARN, SKIP)}
        tail = f"{counts[WARN]} warnings, {counts[SKIP]} skipped"
        if self.ok:
            verdict = f"all {len(self.checks) - counts[SKIP]} checks passed ({tail})"
        else:
            names = ", ".join(f"{c.section}/{c.name}" for c in self.failed)
            verdict = f"FAILED: {names} ({tail})"
        lines.append(f"\n{verdict} in {self.seconds:.1f} s")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


# -- contract -----------------------------------------------------------------------


def outside_support(simulator: Simulator, x: np.ndarray) -> np.ndarray:
    """Per row and observable: a finite value the observable's declared support (or
    codes, or integrality) does not allow; the data checks would refuse it."""
    bad = np.zeros(x.shape, dtype=bool)
    for j, obs in enumerate(simulator.observables):
        column = x[:, j]
        finite = np.isfinite(column)
        if obs.kind == "continuous":
            out = (column <= obs.lower) | (column >= obs.upper)
        else:
            out = (column < obs.lower) | (column > obs.upper)
        if obs.kind == "count":
            out |= column != np.round(column)
        elif obs.kind == "choice":
            out |= ~np.isin(column, obs.codes)
        bad[:, j] = finite & out
    return bad


def _describe_box(simulator: Simulator) -> str:
    return ", ".join(
        f"{p.name} [{p.lower:g}, {p.upper:g}]" for p in simulator.parameters
    )


def check_contract(
    report: CheckReport, simulator: Simulator, simulations: int, seed: int
) -> None:
    """Run `simulate` on a batch from the training prior and check what comes back;
    the exact likelihood is checked on the rows that are finite and in support."""
    section = "contract"
    n, n_par, n_obs = simulations, len(simulator.parameters), len(simulator.observables)
    report.add(
        section,
        "declaration",
        PASS,
        f"parameters {_describe_box(simulator)}; observables "
        + ", ".join(f"{o.name} ({o.kind})" for o in simulator.observables)
        + f"; contract version {simulator.contract_version}",
        parameters=simulator.parameter_names,
        observables=simulator.observable_names,
    )
    try:
        theta = np.asarray(
            simulator.sample_training_prior(n, np.random.default_rng([seed, 0])),
            dtype=float,
        )
    except Exception as exc:
        report.add(
            section,
            "training prior",
            FAIL,
            f"sample_training_prior raised {type(exc).__name__}: {exc}",
        )
        return
    problem = None
    if theta.shape != (n, n_par):
        problem = f"returned shape {theta.shape}; expected ({n}, {n_par})"
    else:
        outside_box = ~((theta >= simulator.lower) & (theta <= simulator.upper))
        if outside_box.any():
            problem = (
                f"{int(outside_box.any(axis=1).sum())} draws lie outside the box "
                f"{_describe_box(simulator)}, where the estimator is not trained"
            )
    if problem:
        report.add(
            section, "training prior", FAIL, f"sample_training_prior({n}) {problem}"
        )
        return
    report.add(
        section, "training prior", PASS, f"{n} draws, all inside the box", draws=n
    )

    def run(rng_seed: list[int]) -> np.ndarray:
        return np.asarray(
            simulator.simulate(theta.copy(), np.random.default_rng(rng_seed))
        )

    given = theta.copy()
    try:
        raw = np.asarray(simulator.simulate(given, np.random.default_rng([seed, 1])))
    except Exception as exc:
        report.add(
            section,
            "shape and dtype",
            FAIL,
            f"simulate raised {type(exc).__name__}: {exc}",
        )
        return
    problems = []
    if raw.shape != (n, n_obs):
        problems.append(
            f"returned shape {raw.shape} for {n} parameter rows; expected {(n, n_obs)} "
            f"(one row per parameter row, one column per observable "
            f"{simulator.observable_names})"
        )
    if not (
        np.issubdtype(raw.dtype, np.floating)
        or np.issubdtype(raw.dtype, np.integer)
        or raw.dtype == np.bool_
    ):
        problems.append(f"returned dtype {raw.dtype}; expected real numbers")
    if not np.array_equal(given, theta):
        problems.append(
            "changed its theta argument in place; work on a copy (training pairs "
            "each parameter row with its output)"
        )
    if problems:
        report.add(section, "shape and dtype", FAIL, "simulate " + "; ".join(problems))
        return
    report.add(
        section,
        "shape and dtype",
        PASS,
        f"simulate({n} x {n_par}) -> {raw.shape} {raw.dtype}",
        shape=list(raw.shape),
        dtype=str(raw.dtype),
    )
    x = raw.astype(float)

    invalid = ~np.isfinite(x)
    rows = invalid.any(axis=1)
    share = rows.mean()
    per_obs = {
        o.name: int(invalid[:, j].sum()) for j, o in enumerate(simulator.observables)
    }
    status = PASS if not rows.any() else WARN if share <= MAX_INVALID_FRACTION else FAIL
    message = f"{int(rows.sum())} of {n} simulations NaN or infinite"
    if rows.any():
        where = ", ".join(f"{k}: {v}" for k, v in per_obs.items() if v)
        worst = theta[rows][:3].round(4).tolist()
        message += (
            f" ({where}; e.g. at theta {worst}); training drops them, so the learned "
            "likelihood ignores those outcomes"
            + (
                f"; more than {MAX_INVALID_FRACTION:.0%} fails"
                if status == FAIL
                else ""
            )
        )
    report.add(
        section,
        "finite outputs",
        status,
        message,
        invalid=int(rows.sum()),
        per_observable=per_obs,
    )

    outside = outside_support(simulator, x)
    if outside.any():
        detail = "; ".join(
            f"{o.name}: {int(outside[:, j].sum())} values such as "
            f"{np.unique(x[outside[:, j], j])[:3].tolist()} outside "
            + (
                f"codes {list(o.codes)}"
                if o.kind == "choice"
                else f"integers in [{o.lower:g}, {o.upper:g}]"
                if o.kind == "count"
                else f"({o.lower:g}, {o.upper:g})"
            )
            for j, o in enumerate(simulator.observables)
            if outside[:, j].any()
        )
        report.add(
            section,
            "support",
            FAIL,
            f"{detail}; the data checks refuse such values, so declare the support "
            "the simulator really has",
            outside=int(outside.any(axis=1).sum()),
        )
    else:
        report.add(
            section, "support", PASS, "every finite value inside its declared support"
        )

    try:
        again, other = run([seed, 1]), run([seed, 2])
    except Exception as exc:
        report.add(
            section, "determinism", FAIL, f"simulate raised {type(exc).__name__}: {exc}"
        )
        return
    if again.shape != raw.shape or not np.array_equal(again, raw, equal_nan=True):
        report.add(
            section,
            "determinism",
            FAIL,
            "the same seed gave different output: draw all randomness from the rng "
            "argument (not np.random.*, random or torch's global generator)",
        )
    elif other.shape == raw.shape and np.array_equal(other, raw, equal_nan=True):
        report.add(
            section,
            "determinism",
            WARN,
            "the same output for two different seeds: is the simulator deterministic? "
            "A likelihood needs noise",
        )
    else:
        report.add(
            section,
            "determinism",
            PASS,
            "same seed, same output; another seed, another",
        )

    keep = ~rows & ~outside.any(axis=1)
    check_exact(report, simulator, theta[keep], x[keep])


def check_exact(
    report: CheckReport, simulator: Simulator, theta: np.ndarray, x: np.ndarray
) -> None:
    """The exact log-likelihood explains what the simulator produced: finite values
    of shape (n,) and finite gradients (NUTS needs them with likelihood='exact')."""
    if simulator.log_likelihood is None:
        report.add(
            "contract",
            "exact likelihood",
            SKIP,
            "none registered: the estimator is checked on held-out simulations only",
        )
        return
    if not len(x):
        report.add(
            "contract", "exact likelihood", SKIP, "no valid simulations to score"
        )
        return
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    try:
        lp = simulator.log_likelihood(t, torch.tensor(x, dtype=torch.float64))
        lp = torch.as_tensor(lp)
        if lp.shape != (len(x),):
            raise ValueError(f"returned shape {tuple(lp.shape)}, expected ({len(x)},)")
        finite = torch.isfinite(lp)
        grad = None
        if lp.requires_grad and finite.any():
            (grad,) = torch.autograd.grad(lp[finite].sum(), t, allow_unused=True)
    except Exception as exc:
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            f"log_likelihood(theta, x) raised {type(exc).__name__}: {exc}",
        )
        return
    bad = int((~finite).sum())
    if bad:
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            f"-inf or NaN for {bad} of {len(x)} simulations it should explain; check "
            "it against simulate (parameter order, observable columns, support)",
            non_finite=bad,
        )
    elif grad is None or not torch.isfinite(grad).all():
        report.add(
            "contract",
            "exact likelihood",
            FAIL,
            "no finite gradient in theta: write it with differentiable torch "
            "operations (NUTS needs gradients for likelihood='exact')",
        )
    else:
        report.add(
            "contract",
            "exact likelihood",
            PASS,
            f"finite, with finite gradients, on all {len(x)} valid simulations",
        )


# -- estimator ----------------------------------------------------------------------


def _estimator_name(estimator: TrainedEstimator) -> str:
    name = Path(estimator.source).name
    return f"{name} ({estimator.kind}, sha256 {estimator.checksum[:12]}...)"


def resolve_for_check(
    report: CheckReport,
    simulator: Simulator,
    estimator: TrainedEstimator | str | Path | None,
    *,
    train: bool,
    progress: bool,
) -> TrainedEstimator | None:
    """The estimator a fit would use, each refusal reported as a failed check: an
    explicit file or object, else what the plugin ships, else the cache (else,
    with `train`, the recipe trained now and cached)."""
    from sbi_plugins.estimators import artifact
    from sbi_plugins.estimators.artifact import TrainedEstimator
    from sbi_plugins.estimators.resolve import cache_path, resolve_estimator

    section = "estimator"
    if isinstance(estimator, TrainedEstimator):
        candidates: list[Callable[[], TrainedEstimator]] = [lambda: estimator]
    elif estimator is not None:
        candidates = [lambda: artifact.load(estimator)]
    else:
        registry = get_registry()
        for art, reason in registry.refused_estimators(simulator.name):
            report.add(section, "shipped file", FAIL, reason, path=str(art.path))
        candidates = [
            (lambda a=a: artifact.load(a.path, expected_sha256=a.sha256))
            for a in registry.estimator_artifacts(simulator.name)
        ]
        cached = cache_path(simulator)
        if cached.exists():
            candidates.append(lambda: artifact.load(cached))
        if not candidates:
            if not train:
                report.add(
                    section,
                    "metadata",
                    SKIP,
                    f"no estimator: the plugin ships none and none is cached. Pass "
                    f"--estimator FILE, run `sbi-plugins train {simulator.name}` (it "
                    "caches one), or ship one (docs/writing-a-plugin.md); --train "
                    "trains one now",
                )
                return None
            candidates.append(lambda: resolve_estimator(simulator, progress=progress))
    for make in candidates:
        try:
            est = make()
        except EstimatorError as exc:
            report.add(section, "file", FAIL, str(exc))
            continue
        try:
            artifact.check_matches(est, simulator)
        except EstimatorError as exc:
            report.add(section, "metadata", FAIL, str(exc))
            continue
        meta = est.metadata
        report.add(
            section,
            "metadata",
            PASS,
            f"{_estimator_name(est)} trained for {simulator.name} version "
            f"{meta.get('simulator_version')} on {_describe_box(simulator)}, "
            f"{meta.get('training', {}).get('num_simulations', '?')} simulations",
            source=est.source,
            sha256=est.checksum,
            kind=est.kind,
        )
        return est
    return None


def fresh_simulations(
    simulator: Simulator,
    estimator: TrainedEstimator,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draws from the training prior and one trial each, keeping the rows a fit
    could score (see `scorable_rows`); also returns how many were dropped."""
    theta = simulator.sample_training_prior(n, rng)
    x = np.asarray(simulator.simulate(theta, rng), dtype=float)
    keep = scorable_rows(simulator, estimator, theta, x)
    return theta[keep], x[keep], int((~keep).sum())


def scorable_rows(
    simulator: Simulator,
    estimator: TrainedEstimator,
    theta: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Rows (under their row-aligned `theta`) that the learned likelihood gives a
    finite value: finite, in the declared support and the support seen in training,
    and with a positive excess over every shift parameter. Training dropped the
    simulations without one (time-step artefacts), so the training figure and the
    calibration data leave them out alike."""
    keep = np.isfinite(x).all(axis=1) & ~outside_support(simulator, x).any(axis=1)
    keep &= inside_training_support(simulator, estimator, x)
    config = estimator.metadata.get("network", {})
    if config.get("shift") and keep.any():
        _, valid, _ = reduction.transform_values(
            config,
            torch.as_tensor(theta[keep], dtype=torch.float64),
            torch.as_tensor(x[keep], dtype=torch.float64),
        )
        keep[np.flatnonzero(keep)[~valid.numpy()]] = False
    return keep


def inside_training_support(
    simulator: Simulator, estimator: TrainedEstimator, x: np.ndarray
) -> np.ndarray:
    """Rows inside the range of every observable the estimator saw in training
    (recorded on the data's own scale, before any shift or scale)."""
    keep = np.ones(len(x), dtype=bool)
    for j, obs in enumerate(simulator.observables):
        if obs.kind == "choice":
            continue
        low, high = estimator.support[obs.name]
        keep &= (x[:, j] >= low) & (x[:, j] <= high)
    return keep


def network_space(simulator: Simulator, config: dict[str, Any]) -> str:
    """How the network sees each shifted or scaled observable, e.g. `(rt - t) / a^2`;
    empty when it sees the data as they are."""
    names = simulator.parameter_names

    def factor(k: float, power: float) -> str:
        return names[int(k)] + ("" if power == 1 else f"^{power:g}")

    parts = []
    for j, obs in enumerate(simulator.observables):
        shift = [names[k] for c, k in config.get("shift", []) if c == j]
        scale = [product for c, product in config.get("scale", []) if c == j]
        if not shift and not scale:
            continue
        text = f"({obs.name} - {shift[0]})" if shift else obs.name
        for product in scale:
            divisor = " * ".join(factor(k, p) for k, p in product)
            text += f" / ({divisor})" if len(product) > 1 else f" / {divisor}"
        parts.append(text)
    return ", ".join(parts)


def check_estimator_quality(
    report: CheckReport,
    simulator: Simulator,
    estimator: TrainedEstimator,
    *,
    heldout: int,
    max_log_error: float,
    seed: int,
) -> None:
    """Held-out log-likelihood against the training validation loss and, where an
    exact likelihood exists, the learned log-density's error against it.

    The held-out figure is compared in the network's own space. An estimator with
    a shift or scale (the DDM's `(rt - t) / a**2`) was trained, and its validation
    loss measured, on the transformed values; on the data's scale every row's
    log-density differs from the network's by that row's log-Jacobian (`-2 log a`),
    which says nothing about the estimator's quality. Subtracting it row by row
    gives exactly the quantity training averaged, on fresh draws from the same
    prior, so any gap is the network's. Adding the Jacobian to the training figure
    instead would need the validation draws' parameters, which are not stored, and
    an estimate of their mean Jacobian would add noise of its own. The data-scale
    figure is still reported; the exact-likelihood comparison below stays on the
    data's scale, where both densities live.
    """
    from sbi_plugins.likelihoods.distribution import Likelihood

    section = "estimator"
    theta, x, dropped = fresh_simulations(
        simulator, estimator, heldout, np.random.default_rng([seed, 10])
    )
    if len(x) < 2:
        report.add(section, "held-out log-likelihood", FAIL, "no scorable simulations")
        return
    lik = Likelihood(simulator, estimator)
    t, xt = torch.tensor(theta), torch.tensor(x)
    with torch.no_grad():
        learned = lik.log_prob(t, xt).double().numpy()
    finite = np.isfinite(learned)
    if not finite.all():
        report.add(
            section,
            "held-out log-likelihood",
            FAIL,
            f"-inf or NaN for {int((~finite).sum())} of {len(x)} fresh simulations "
            "inside the training domain; retrain",
        )
        return
    config = estimator.metadata.get("network", {})
    _, _, log_jacobian = reduction.transform_values(config, t, xt)
    network = learned - log_jacobian.double().numpy()
    space = network_space(simulator, config)
    mean = float(network.mean())
    sd = float(network.std(ddof=1))
    se = sd / math.sqrt(len(network))
    training = estimator.metadata.get("training", {})
    where = ""
    if space:
        where = (
            f" in the network's space ({space}; {float(learned.mean()):.3f} on the "
            "data's scale)"
        )
    message = (
        f"mean log-prob per trial {mean:.3f} ± {se:.3f}{where} on {len(x)} fresh "
        f"simulations ({dropped} outside the training support left out)"
    )
    values: dict[str, Any] = {
        "mean": mean,
        "se": se,
        "n": len(x),
        "dropped": dropped,
        "data_scale_mean": float(learned.mean()),
        "network_space": space,
    }
    status = PASS
    if "best_validation_loss" in training:
        expected = -float(training["best_validation_loss"])
        n_val = max(1.0, 0.1 * float(training.get("num_simulations", 0)))
        margin = HELDOUT_MARGIN + 4 * sd * math.sqrt(1 / len(x) + 1 / n_val)
        values.update(training_value=expected, margin=margin)
        message += f"; in training {expected:.3f}"
        if mean < expected - margin:
            status = FAIL
            message += (
                f", {expected - mean:.3f} nats better than now (allowed {margin:.3f}): "
                "the simulator no longer produces what the estimator learned. Bump "
                "the simulator's version and retrain"
            )
    report.add(section, "held-out log-likelihood", status, message, **values)

    if simulator.log_likelihood is None:
        report.add(section, "error vs exact", SKIP, "no exact log-likelihood")
        return
    with torch.no_grad():
        exact = torch.as_tensor(simulator.log_likelihood(t, xt)).double().numpy()
    ok = np.isfinite(exact)
    err = learned[ok] - exact[ok]
    mae = float(np.abs(err).mean())
    kl = float(-err.mean())
    kl_se = float(err.std(ddof=1) / math.sqrt(len(err)))
    status = PASS if mae <= max_log_error else FAIL
    disagree = kl < -(EXACT_MARGIN + 4 * kl_se)
    message = (
        f"mean |learned - exact| {mae:.4f} nats per trial (95% of rows within "
        f"{np.quantile(np.abs(err), 0.95):.3f}, largest {np.abs(err).max():.3f}); "
        f"KL(exact || learned) about {kl:.4f} ± {kl_se:.4f}; "
        f"threshold {max_log_error:g}"
    )
    if disagree:
        status = FAIL
        message += (
            f": the exact likelihood explains the simulations {-kl:.3f} nats per "
            "trial worse than the learned one, so it and simulate describe different "
            "models (parameter or column order? a changed simulate?)"
        )
    elif status == FAIL:
        message += (
            ": train on more simulations or a larger network (the recipe), or check "
            "that the exact likelihood and the simulator describe the same model"
        )
    report.add(
        section,
        "error vs exact",
        status,
        message,
        mae=mae,
        kl=kl,
        kl_se=kl_se,
        threshold=max_log_error,
        n=len(err),
    )


# -- calibration --------------------------------------------------------------------


@dataclass
class SbcSettings:
    """How big the SBC run is: data sets, trials per data set, and NUTS's budget.

    The data sets are fitted together as one unpooled model (one group per data
    set): its posterior factorizes into the pooled posterior of each data set, so
    one NUTS run with one JIT-compiled model stands for `datasets` separate fits.
    Keeping every `thin`-th draw cuts the autocorrelation that would otherwise
    make ranks look too extreme.
    """

    datasets: int = 30
    trials: int = 20
    tune: int = 200
    draws: int = 200
    thin: int = 2
    alpha: float = SBC_ALPHA

    def describe(self) -> str:
        kept = len(range(0, self.draws, self.thin))
        return (
            f"{self.datasets} data sets x {self.trials} trials, NUTS 1 chain, "
            f"{self.tune} tuning steps, {self.draws} draws thinned by {self.thin} "
            f"(ranks 0..{kept})"
        )


def draw_sbc_datasets(
    simulator: Simulator,
    estimator: TrainedEstimator,
    settings: SbcSettings,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """True parameters from the pooled prior (the prior a pooled fit uses) and a
    data set each; a data set with a row its true parameters cannot score (NaN,
    outside the support seen in training, no positive excess over a shift
    parameter) is redrawn, and counted: a fit would refuse it or could not start."""
    from sbi_plugins.model.distributions import TruncatedToBox
    from sbi_plugins.model.pooling import normalize_pooling, plan_parameters

    plans = plan_parameters(simulator, normalize_pooling("complete", simulator, False))
    priors = [
        TruncatedToBox(
            plan.prior.hyperpriors["mu"], plan.parameter.lower, plan.parameter.upper
        )
        for plan in plans
    ]
    rng = np.random.default_rng([seed, 20])
    n, k = settings.datasets, settings.trials
    thetas, xs, redrawn = [], [], 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(50):
            theta = torch.stack([p.sample((n,)) for p in priors], dim=-1).double()
            theta = theta.numpy()
            rows_theta = np.repeat(theta, k, axis=0)
            x = np.asarray(simulator.simulate(rows_theta, rng), float)
            rows = scorable_rows(simulator, estimator, rows_theta, x)
            good = rows.reshape(n, k).all(axis=1)
            redrawn += int((~good).sum())
            thetas.extend(theta[good])
            xs.extend(x.reshape(n, k, -1)[good])
            if len(thetas) >= n:
                break
    if len(thetas) < n:
        raise EstimatorError(
            f"could not draw {n} data sets a fit accepts: most simulations fall "
            "outside the support the estimator saw in training; retrain it"
        )
    return np.array(thetas[:n]), np.array(xs[:n]), redrawn


def check_calibration(
    report: CheckReport,
    simulator: Simulator,
    estimator: TrainedEstimator,
    settings: SbcSettings,
    *,
    seed: int,
    progress: bool,
) -> None:
    """Fit each SBC data set with the learned likelihood; per parameter, a
    chi-square test over rank bins and a Kolmogorov-Smirnov test of the (jittered,
    normalized) ranks against uniform."""
    import pandas as pd
    from scipy import stats

    from sbi_plugins.runner import fit

    section = "calibration"
    started = time.perf_counter()
    try:
        truth, x, redrawn = draw_sbc_datasets(simulator, estimator, settings, seed)
    except EstimatorError as exc:
        report.add(section, "data sets", FAIL, str(exc))
        return
    n, k = settings.datasets, settings.trials
    group = "sbc_dataset"
    while group in simulator.observable_names:
        group += "_"
    frame = pd.DataFrame(
        {o.name: x[:, :, j].ravel() for j, o in enumerate(simulator.observables)}
    )
    frame[group] = np.repeat(np.arange(n), k)
    with warnings.catch_warnings():
        # true values near a bound put posterior mass there; that is expected here
        warnings.simplefilter("ignore", DomainWarning)
        idata = fit(
            frame,
            simulator,
            group=group,
            pooling="none",
            estimator=estimator,
            draws=settings.draws,
            tune=settings.tune,
            chains=1,
            seed=seed,
            progress=progress,
            cores=1,
            posterior_predictive=False,
        )
    seconds = time.perf_counter() - started
    divergent = int(idata.sample_stats["diverging"].values.sum())
    report.add(
        section,
        "sampler",
        PASS if divergent <= 0.01 * settings.draws else WARN,
        f"{settings.describe()}; {divergent} divergent transitions; {redrawn} data "
        f"sets redrawn (outside the training support); {seconds:.1f} s",
        divergent=divergent,
        redrawn=redrawn,
        seconds=seconds,
        **dataclasses.asdict(settings),
    )
    rng = np.random.default_rng([seed, 30])
    threshold = settings.alpha / (2 * len(simulator.parameters))
    bins = int(np.clip(n // 5, 2, 10))
    for i, name in enumerate(simulator.parameter_names):
        draws = idata.posterior[name].values[0, :: settings.thin, :]
        ranks = (draws < truth[None, :, i]).sum(axis=0)
        u = (ranks + rng.uniform(size=n)) / (draws.shape[0] + 1)
        counts = np.histogram(u, bins=bins, range=(0.0, 1.0))[0]
        chi2 = stats.chisquare(counts)
        ks = stats.kstest(u, "uniform")
        p_min = min(float(chi2.pvalue), float(ks.pvalue))
        status = PASS if p_min >= threshold else FAIL
        mean, sd = float(u.mean()), float(u.std())
        message = (
            f"rank histogram {counts.tolist()}; chi-square {chi2.statistic:.2f} "
            f"({bins - 1} dof) p={chi2.pvalue:.3f}; KS {ks.statistic:.3f} "
            f"p={ks.pvalue:.3f}; mean rank {mean:.2f} (0.5), sd {sd:.3f} (0.289); "
            f"fails below p={threshold:.4f}"
        )
        if status == FAIL:
            message += ": " + _diagnose(mean, sd)
        report.add(
            section,
            name,
            status,
            message,
            ranks=ranks,
            max_rank=draws.shape[0],
            histogram=counts,
            chi2=float(chi2.statistic),
            chi2_p=float(chi2.pvalue),
            ks=float(ks.statistic),
            ks_p=float(ks.pvalue),
            mean_rank=mean,
            sd_rank=sd,
            threshold=threshold,
        )


def _diagnose(mean: float, sd: float) -> str:
    """What a non-uniform rank histogram usually means: a shifted mean rank is a
    bias; with the mean near 0.5, the spread says too wide or too narrow."""
    hints = []
    if mean > 0.6:
        hints.append("true values sit above most posterior draws (posterior too low)")
    elif mean < 0.4:
        hints.append("true values sit below most posterior draws (posterior too high)")
    elif sd > 0.32:
        hints.append("ranks pile up at the ends (posteriors too narrow)")
    elif sd < 0.25:
        hints.append("ranks pile up in the middle (posteriors too wide)")
    hints.append(
        "retrain the estimator on more simulations, or check the simulator and the "
        "likelihood"
    )
    return "; ".join(hints)


# -- entry point --------------------------------------------------------------------


def _guarded(
    report: CheckReport, section: str, run: Callable[..., None], *args, **kwargs
) -> None:
    """Run one section; a plugin bug that raises becomes a failed check, so the
    author gets the report instead of a traceback."""
    try:
        run(*args, **kwargs)
    except PluginError:
        raise
    except Exception as exc:
        report.add(
            section,
            "error",
            FAIL,
            f"{run.__name__} stopped: {type(exc).__name__}: {exc}",
        )


def registration_failures(name: str) -> list[str]:
    """Loading errors of plugins that mention simulator `name`: why it is missing."""
    return [
        f"plugin {info.name!r}: {error}"
        for info in get_registry().plugins()
        for error in info.errors
        if f"'{name}'" in error
    ]


def check_simulator(
    simulator: str | Simulator,
    *,
    estimator: TrainedEstimator | str | Path | None = None,
    simulations: int = 1000,
    heldout: int = 2000,
    max_log_error: float = MAX_LOG_ERROR,
    sbc: SbcSettings | None = None,
    train: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> CheckReport:
    """Run every check on a simulator (a name or a Simulator); `sbc=None` skips the
    calibration. A simulator whose plugin failed to register it gets a report with
    that failure; an unknown name raises PluginError."""
    started = time.perf_counter()
    registry = get_registry()
    if isinstance(simulator, str):
        try:
            sim = registry.simulator(simulator)
        except PluginError:
            failures = registration_failures(simulator)
            if not failures:
                raise
            report = CheckReport(simulator, "?", "not registered")
            report.add("contract", "registration", FAIL, "; ".join(failures))
            report.seconds = time.perf_counter() - started
            return report
    else:
        sim = simulator
    owner = registry.owner(sim.name)
    plugin = "not registered by a plugin"
    if owner is not None:
        plugin = f"plugin {owner.name}"
        if owner.distribution:
            plugin += f", {owner.distribution} {owner.version}"
    report = CheckReport(sim.name, sim.version, plugin)
    _guarded(report, "contract", check_contract, report, sim, simulations, seed)
    contract_ok = report.ok
    est = resolve_for_check(report, sim, estimator, train=train, progress=progress)
    if est is not None and contract_ok:
        _guarded(
            report,
            "estimator",
            check_estimator_quality,
            report,
            sim,
            est,
            heldout=heldout,
            max_log_error=max_log_error,
            seed=seed,
        )
    elif est is not None:
        report.add(
            "estimator", "held-out log-likelihood", SKIP, "needs a working simulator"
        )
    if sbc is None:
        report.add("calibration", "SBC", SKIP, "skipped (--no-sbc)")
    elif est is None:
        report.add("calibration", "SBC", SKIP, "needs an estimator")
    elif not report.ok:
        report.add(
            "calibration", "SBC", SKIP, "skipped: fix the failed checks above first"
        )
    else:
        _guarded(
            report,
            "calibration",
            check_calibration,
            report,
            sim,
            est,
            sbc,
            seed=seed,
            progress=progress,
        )
    report.seconds = time.perf_counter() - started
    return report
