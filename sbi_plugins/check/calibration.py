"""The calibration section of `sbi-plugins check`: simulation-based calibration (SBC)
of the non-hierarchical model. True parameters are drawn from the pooled prior, a
data set simulated at each, all fitted with NUTS, and the ranks of the true values
among the posterior draws tested for uniformity.

Two functions touch the model and the fit path, so that a change there is adapted in
one place: `pooled_prior` and `fit_datasets`."""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from sbi_plugins.check.estimator import scorable_rows
from sbi_plugins.check.report import FAIL, PASS, WARN, CheckReport
from sbi_plugins.contract import Simulator
from sbi_plugins.errors import DomainWarning, EstimatorError

if TYPE_CHECKING:
    import pandas as pd
    from arviz import InferenceData
    from torch.distributions import Distribution

    from sbi_plugins.estimators.artifact import TrainedEstimator

SBC_ALPHA = 0.01
"""Family-wise false-alarm rate of the SBC uniformity tests (Bonferroni over two
tests per parameter): a well-calibrated fit fails one run in a hundred."""


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


def pooled_prior(simulator: Simulator) -> list[Distribution]:
    """The prior a pooled fit puts on each parameter, truncated to the training box,
    in parameter order: where SBC draws its true values. Taken from the model's own
    plans (`ParameterPlan.fixed_prior`, what a complete or unpooled parameter is
    sampled from), so SBC's truth and the fitted model cannot drift apart."""
    from sbi_plugins.model.pooling import plan_parameters

    plans = plan_parameters(simulator, dict.fromkeys(simulator.parameter_names, "none"))
    return [plan.fixed_prior for plan in plans]


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
    priors = pooled_prior(simulator)
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


def datasets_frame(simulator: Simulator, x: np.ndarray) -> tuple[pd.DataFrame, str]:
    """The data sets `x` (data sets, trials, observables) as one table, with a group
    column (named so as not to clash with an observable) that says which is which."""
    import pandas as pd

    n, k = x.shape[:2]
    group = "sbc_dataset"
    while group in simulator.observable_names:
        group += "_"
    frame = pd.DataFrame(
        {o.name: x[:, :, j].ravel() for j, o in enumerate(simulator.observables)}
    )
    frame[group] = np.repeat(np.arange(n), k)
    return frame, group


def fit_datasets(
    frame: pd.DataFrame,
    group: str,
    simulator: Simulator,
    estimator: TrainedEstimator,
    settings: SbcSettings,
    *,
    seed: int,
    progress: bool,
) -> InferenceData:
    """All data sets in one unpooled fit (see `SbcSettings`), one chain: the one call
    into the fit path, so that a change of `fit` is adapted here."""
    from sbi_plugins.runner import fit

    with warnings.catch_warnings():
        # true values near a bound put posterior mass there; that is expected here
        warnings.simplefilter("ignore", DomainWarning)
        # one short chain per data set: its r-hat and ESS say nothing of calibration,
        # and the fit's advice (--draws) is not this command's
        warnings.filterwarnings("ignore", "(r-hat|bulk ESS) is", RuntimeWarning)
        return fit(
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
    from scipy import stats

    section = "calibration"
    started = time.perf_counter()
    try:
        truth, x, redrawn = draw_sbc_datasets(simulator, estimator, settings, seed)
    except EstimatorError as exc:
        report.add(section, "data sets", FAIL, str(exc))
        return
    n = settings.datasets
    frame, group = datasets_frame(simulator, x)
    idata = fit_datasets(
        frame, group, simulator, estimator, settings, seed=seed, progress=progress
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
            message += ": " + diagnose(mean, sd)
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


def diagnose(mean: float, sd: float) -> str:
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
