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

One module per job: `report` (statuses, the report and its rendering), `contract`,
`estimator` and `calibration` (one section each); this module runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sbi_plugins.check.calibration import (
    SBC_ALPHA,
    SbcSettings,
    check_calibration,
    diagnose,
    draw_sbc_datasets,
    pooled_prior,
)
from sbi_plugins.check.contract import (
    MAX_INVALID_FRACTION,
    check_contract,
    check_exact,
)
from sbi_plugins.check.estimator import (
    EXACT_MARGIN,
    HELDOUT_MARGIN,
    MAX_LOG_ERROR,
    check_estimator_quality,
    fresh_simulations,
    inside_training_support,
    network_space,
    resolve_for_check,
    scorable_rows,
)
from sbi_plugins.check.report import (
    EXIT_FAILED,
    FAIL,
    PASS,
    SKIP,
    WARN,
    Check,
    CheckReport,
)
from sbi_plugins.contract import Simulator
from sbi_plugins.errors import PluginError
from sbi_plugins.plugin.registry import get_registry

if TYPE_CHECKING:
    from sbi_plugins.estimators.artifact import TrainedEstimator

__all__ = [
    "EXACT_MARGIN",
    "EXIT_FAILED",
    "FAIL",
    "HELDOUT_MARGIN",
    "MAX_INVALID_FRACTION",
    "MAX_LOG_ERROR",
    "PASS",
    "SBC_ALPHA",
    "SKIP",
    "WARN",
    "Check",
    "CheckReport",
    "SbcSettings",
    "check_calibration",
    "check_contract",
    "check_estimator_quality",
    "check_exact",
    "check_simulator",
    "diagnose",
    "draw_sbc_datasets",
    "fresh_simulations",
    "inside_training_support",
    "network_space",
    "pooled_prior",
    "registration_failures",
    "resolve_for_check",
    "scorable_rows",
]


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
