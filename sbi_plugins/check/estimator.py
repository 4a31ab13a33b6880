"""The estimator section of `sbi-plugins check`: the estimator a fit would use, its
held-out log-likelihood on fresh simulations against its training figure (in the
network's own space), and its error against the exact likelihood where there is one."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sbi_plugins.check.contract import describe_box
from sbi_plugins.check.report import FAIL, PASS, SKIP, CheckReport
from sbi_plugins.contract import Simulator, outside_support
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import reduction
from sbi_plugins.plugin.registry import get_registry

if TYPE_CHECKING:
    from sbi_plugins.estimators.artifact import TrainedEstimator

HELDOUT_MARGIN = 0.1
"""Nats per trial the held-out log-likelihood may fall below the training validation
value (beyond 4 standard errors) before the estimator counts as stale."""
MAX_LOG_ERROR = 0.1
"""Mean absolute error (nats per trial) of the learned against the exact
log-likelihood on fresh simulations above which the estimator fails."""
EXACT_MARGIN = 0.01
"""KL(exact || learned) is never negative; an estimate below -(this + 4 standard
errors) means the exact likelihood does not describe the simulator."""


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
            f"{meta.get('simulator_version')} on {describe_box(simulator)}, "
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
        shift = [
            reduction.floor_text(spec, names)
            for c, spec in config.get("shift", [])
            if c == j
        ]
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
