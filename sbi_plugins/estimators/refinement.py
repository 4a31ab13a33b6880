"""Per-fit local refinement: fine-tune the estimator where this fit's posterior is.

A learned likelihood has a small, fixed error per trial; the posterior narrows like
1/sqrt(trials), so at study scale the same error becomes a sizeable share of the
posterior sd (DDM, shipped estimator: 0.2 sd at 1,000 trials, 0.6 sd at 6,000,
0.9 sd at 10,000). Sequential NLE's remedy, made automatic: simulate one trial at
each of many parameter vectors drawn from the first posterior (each cell's draws
spread `widen` times as far from its mean, clipped inside the training box; a
quarter over the whole box, as sequential NLE keeps its first round's data),
fine-tune a copy of the estimator on them, refit, and repeat while the posterior
still moves. The shift between rounds is the diagnostic: round one's shift is, to
within Monte Carlo noise, the amortized estimator's error in posterior sd
(docs/refinement.md shows it against the exact fit's gap).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import torch
from tqdm.auto import tqdm

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import EstimatorError, EstimatorWarning, SbiPluginsError
from sbi_plugins.estimators import artifact
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.estimators.resolve import cache_dir
from sbi_plugins.estimators.simulation import SIMULATION_CHUNK
from sbi_plugins.estimators.training import (
    _refine,
    drop_invalid,
    encode_for_network,
    subtract_shifts,
)
from sbi_plugins.parallel import forked_map, local_workers

REFINE_FROM_TRIALS = 2000
"""`refine="auto"` refines from this many data rows. The shipped DDM estimator's
mean gap grows like 0.21 sd x sqrt(rows / 1000) (0.21 at 1,000 rows, 0.63 at
6,000, 0.95 at 10,000), so it passes 0.3 sd near 2,000 rows; an estimator may
state its own threshold as `metadata["refine_from_trials"]`."""


@dataclass(frozen=True)
class Refinement:
    """How a fit refines its estimator at its own posterior.

    Defaults measured on the DDM (docs/refinement.md): 1M simulations (`replay`,
    a quarter, over the whole box) x 10 epochs at a learning rate of 1e-4 take
    about 70 s a round on 2 cores."""

    rounds: int = 3
    simulations: int = 1_000_000
    epochs: int = 10
    learning_rate: float = 1e-4
    widen: float = 2.0
    tolerance: float = 0.2
    batch_size: int = 4096
    replay: float = 0.25

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.simulations < 1000 or self.epochs < 1:
            raise SbiPluginsError(
                "refinement needs rounds >= 1, simulations >= 1000 and epochs >= 1, "
                f"got {self.rounds}, {self.simulations} and {self.epochs}"
            )
        if not 0 <= self.replay < 1:
            raise SbiPluginsError(
                f"refinement replay is a fraction in [0, 1), got {self.replay}"
            )
        if self.widen < 1 or self.tolerance <= 0 or self.learning_rate <= 0:
            raise SbiPluginsError(
                "refinement needs widen >= 1 and a positive tolerance and learning "
                f"rate, got {self.widen}, {self.tolerance} and {self.learning_rate}"
            )

    def key(self) -> dict[str, Any]:
        """What the refined estimator depends on (the tolerance only decides when
        to stop)."""
        fields = dataclasses.asdict(self)
        fields.pop("tolerance")
        return fields


RefineRequest = bool | int | str | Refinement | None


def refinement_plan(
    request: RefineRequest, num_rows: int, estimator: TrainedEstimator | None
) -> Refinement | None:
    """The refinement a fit runs, or None: "auto" (the default) refines neural
    fits of at least `REFINE_FROM_TRIALS` rows, True always, an int caps the
    rounds, a `Refinement` sets everything; False, 0 and exact fits never."""
    if isinstance(request, bool) or request is None:
        plan = Refinement() if request else None
    elif isinstance(request, Refinement):
        plan = request
    elif isinstance(request, int):
        if request < 0:
            raise SbiPluginsError(f"refine rounds must be at least 0, got {request}")
        plan = Refinement(rounds=request) if request else None
    elif request == "auto":
        plan = Refinement() if num_rows >= refine_threshold(estimator) else None
    else:
        raise SbiPluginsError(
            f"refine must be 'auto', True, False, a number of rounds or a "
            f"Refinement, got {request!r}"
        )
    return plan if estimator is not None else None


def refine_threshold(estimator: TrainedEstimator | None) -> int:
    if estimator is None:
        return REFINE_FROM_TRIALS
    return int(estimator.metadata.get("refine_from_trials", REFINE_FROM_TRIALS))


def local_parameters(
    theta: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    count: int,
    widen: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """`count` parameter vectors from the posterior cell draws `theta` (chain,
    draw, cell, parameter): as many per cell, each a random draw moved `widen`
    times as far from its cell's posterior mean, clipped just inside the box."""
    draws = theta.reshape(-1, *theta.shape[2:])  # (sample, cell, parameter)
    cells = draws.shape[1]
    per_cell = max(count // cells, 1)
    picked = draws[rng.integers(len(draws), size=(per_cell, cells)), np.arange(cells)]
    centre = draws.mean(axis=0)
    spread = centre + widen * (picked - centre)
    margin = 1e-3 * (upper - lower)
    return np.clip(spread.reshape(-1, draws.shape[2]), lower + margin, upper - margin)


def refinement_parameters(
    theta_draws: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    plan: Refinement,
    rng: np.random.Generator,
) -> np.ndarray:
    """Where a round simulates: `local_parameters` of the posterior draws, and a
    `plan.replay` share drawn uniformly over the box as the amortized estimator was
    trained. The replay keeps the network right away from the posterior, where the
    sampler's trajectories and the hyperparameters' tails still go: without it a
    10 x 100 fit's `a_mu` came out 1.44 times the exact sd, with a quarter 1.06."""
    box_wide = round(plan.simulations * plan.replay)
    local = local_parameters(
        theta_draws, lower, upper, plan.simulations - box_wide, plan.widen, rng
    )
    return np.vstack([local, rng.uniform(lower, upper, size=(box_wide, len(lower)))])


def simulate_at(
    simulator: Simulator,
    theta: np.ndarray,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """One simulated row per parameter row, in chunks with generators of their own
    (`default_rng([seed, 3, chunk])`): the same seed gives the same rows however
    many local processes ran them."""
    starts = list(range(0, len(theta), SIMULATION_CHUNK))
    tasks = [(i, slice(s, s + SIMULATION_CHUNK)) for i, s in enumerate(starts)]
    n = 1 if len(tasks) < 4 else local_workers(workers, len(tasks))
    out = np.empty((len(theta), len(simulator.observables)))
    simulate = functools.partial(_simulate_chunk, simulator, theta, seed)
    with (
        tqdm(
            total=len(theta),
            desc=f"simulating {simulator.name} at the posterior",
            unit="sim",
            disable=not progress,
        ) as bar,
        closing(forked_map(simulate, tasks, n)) as done,
    ):
        for position, rows in done:
            out[tasks[position][1]] = rows
            bar.update(len(rows))
    return out


def _simulate_chunk(
    simulator: Simulator, theta: np.ndarray, seed: int, index: int, rows: slice
) -> np.ndarray:
    rng = np.random.default_rng([seed, 3, index])
    return np.asarray(simulator.simulate(theta[rows].copy(), rng), dtype=np.float64)


def refine_estimator(
    simulator: Simulator,
    estimator: TrainedEstimator,
    theta_draws: np.ndarray,
    plan: Refinement,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[TrainedEstimator, dict[str, Any]]:
    """A copy of `estimator` fine-tuned (every weight, sbi's NLE loss, Adam with a
    cosine decay) on simulations at `refinement_parameters` of `theta_draws`; the
    original is left as it was. Returns it with what the round cost."""
    started = time.perf_counter()
    theta = refinement_parameters(
        theta_draws,
        np.asarray(simulator.lower, dtype=float),
        np.asarray(simulator.upper, dtype=float),
        plan,
        np.random.default_rng([seed, 3]),
    )
    x = simulate_at(simulator, theta, seed, workers=workers, progress=progress)
    simulated = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few time-step artefacts are expected
        theta, x = drop_invalid(theta, x)
        theta, x = subtract_shifts(estimator.metadata["network"], theta, x)
    net = copy.deepcopy(estimator.net)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(encode_for_network(simulator, x), dtype=torch.float32)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        return -net.log_prob(x_t[rows][None], theta_t[rows]).mean()

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        summary = _refine(
            list(net.parameters()),
            [net],
            loss_of,
            len(theta_t),
            desc="refining the estimator at the posterior",
            epochs=plan.epochs,
            seed=seed,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            progress=progress,
        )
    cost = {
        **summary,
        "simulation_seconds": round(simulated - started, 1),
        "training_seconds": round(time.perf_counter() - simulated, 1),
    }
    metadata = copy.deepcopy(estimator.metadata)
    metadata["training"].setdefault("local_refinement", []).append(cost)
    metadata["refined_from"] = metadata.get("refined_from", estimator.checksum)
    refined = TrainedEstimator(
        net, metadata, estimator.example_theta, estimator.example_x, source="refined"
    )
    return refined, cost


def posterior_shift(
    before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """How far the posterior means moved, in the earlier posterior's sd: the worst
    |mean difference| over every variable and element, and the worst after taking
    off twice the two means' Monte Carlo error (ArviZ's mcse_mean), which is what
    the stop rule compares with its tolerance."""
    names = [n for n in before if n in after]
    a, b = (
        az.summary(az.from_dict(posterior={n: d[n] for n in names}), round_to="none")
        for d in (before, after)
    )
    sd = a["sd"].where(a["sd"] > 0)
    shift = (b["mean"] - a["mean"]).abs() / sd
    noise = 2 * np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2) / sd
    excess = (shift - noise).clip(lower=0)
    return {
        "max_shift_sd": round(float(shift.max()), 3),
        "worst": str(shift.idxmax()),
        "max_beyond_noise_sd": round(float(excess.max()), 3),
        "max_noise_sd": round(float(noise.max()), 3),
        "sd_ratio": [
            round(float((b["sd"] / sd).min()), 3),
            round(float((b["sd"] / sd).max()), 3),
        ],
    }


Sampler = Callable[[TrainedEstimator], tuple[Any, Mapping[str, np.ndarray]]]
"""Fits the model with an estimator: (the fit, its cell draws (chain, draw, cell,
parameter)); posterior variables come from `variables_of(fit)`."""


def refine_and_refit(
    simulator: Simulator,
    estimator: TrainedEstimator,
    first: Any,
    sample: Sampler,
    theta_of: Callable[[Any], np.ndarray],
    variables_of: Callable[[Any], Mapping[str, np.ndarray]],
    plan: Refinement,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[TrainedEstimator, Any, dict[str, Any]]:
    """Refine at the latest fit's posterior and refit, round after round, until
    the posterior moves less than `plan.tolerance` sd beyond Monte Carlo noise or
    the rounds run out. Returns the last estimator, its fit and the record."""
    rounds = []
    fit = first
    for r in range(1, plan.rounds + 1):
        started = time.perf_counter()
        estimator, cost = refine_estimator(
            simulator,
            estimator,
            theta_of(fit),
            plan,
            seed + r,
            workers=workers,
            progress=progress,
        )
        refitted = time.perf_counter()
        new_fit = sample(estimator)
        shift = posterior_shift(variables_of(fit), variables_of(new_fit))
        rounds.append(
            {
                "round": r,
                **cost,
                "fit_seconds": round(time.perf_counter() - refitted, 1),
                "round_seconds": round(time.perf_counter() - started, 1),
                **shift,
            }
        )
        fit = new_fit
        settled = shift["max_beyond_noise_sd"] <= plan.tolerance
        if settled or too_noisy(shift, plan.tolerance):
            break  # more rounds would not tell more
    return estimator, fit, record_of(plan, rounds)


def too_noisy(shift: Mapping[str, Any], tolerance: float) -> bool:
    """Monte Carlo error alone could hide a shift of the tolerance: too few
    effective draws to tell whether the posterior still moves."""
    return shift.get("max_noise_sd", 0.0) > tolerance


def record_of(plan: Refinement, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The refinement's record for attrs: its settings, each round, what it cost,
    and whether the last round settled the posterior (moved it less than the
    tolerance beyond Monte Carlo noise, with noise small enough to tell)."""
    last = rounds[-1]
    return {
        "settings": dataclasses.asdict(plan),
        "rounds": rounds,
        "simulations": sum(r["num_simulations"] for r in rounds),
        "seconds": round(
            sum(r["simulation_seconds"] + r["training_seconds"] for r in rounds), 1
        ),
        "refit_seconds": round(sum(r.get("fit_seconds", 0.0) for r in rounds), 1),
        "converged": last["max_beyond_noise_sd"] <= plan.tolerance
        and not too_noisy(last, plan.tolerance),
    }


# -- the verdict -------------------------------------------------------------


def estimator_check(
    record: Mapping[str, Any] | None,
    *,
    exact: bool,
    num_rows: int,
    estimator: TrainedEstimator | None,
    reused: bool = False,
) -> dict[str, Any]:
    """Whether the learned likelihood's error matters at this data size, as
    "exact" (no estimator), "passed" (refinement converged), "flagged" (a large
    unrefined fit, or refinement still moving the posterior) or "small data"."""
    if exact:
        return {"verdict": "exact", "message": "exact likelihood: no estimator"}
    threshold = refine_threshold(estimator)
    if record is None:
        if num_rows < threshold:
            return {
                "verdict": "small data",
                "message": (
                    f"not refined: {num_rows} rows, below the {threshold} from which "
                    "a learned likelihood's error is a sizeable share of the "
                    "posterior sd (refine=True checks it)"
                ),
            }
        return {
            "verdict": "flagged",
            "message": (
                f"not refined at {num_rows} rows: at this size a learned "
                "likelihood's error can move posterior means by more than 0.3 sd "
                "(docs/refinement.md); refit with refine=True (--refine on) to "
                "check and correct it, or use likelihood='exact' where the plugin "
                "has one"
            ),
        }
    rounds = record["rounds"]
    last = rounds[-1]
    tolerance = record["settings"]["tolerance"]
    where = " (reused from the cache)" if reused else ""
    moved = (
        f"the last round moved the posterior {last['max_shift_sd']:.2f} sd at most "
        f"({last['worst']}), {last['max_beyond_noise_sd']:.2f} sd beyond Monte Carlo "
        f"noise"
    )
    if len(rounds) > 1:
        moved += " (rounds: " + ", ".join(f"{r['max_shift_sd']:.2f}" for r in rounds)
        moved += " sd)"
    head = f"refined in {len(rounds)} round{'s' if len(rounds) > 1 else ''}{where}"
    common = {"reused": reused, "rounds": len(rounds)}
    if record["converged"]:
        return {
            "verdict": "passed",
            "message": f"{head}: {moved}, within the tolerance of {tolerance} sd",
            **common,
        }
    if too_noisy(last, tolerance):
        return {
            "verdict": "flagged",
            "message": (
                f"{head}, but too few effective draws to tell whether the "
                f"estimator's error matters: the means' Monte Carlo error alone is "
                f"up to {last['max_noise_sd']:.2f} sd, above the tolerance of "
                f"{tolerance} sd; fit with more draws (draws=1000 or more)"
            ),
            **common,
        }
    return {
        "verdict": "flagged",
        "message": (
            f"{head}: {moved}, above the tolerance of {tolerance} sd: the "
            "estimator's error may still matter; refine with more rounds or "
            "simulations (refine=Refinement(rounds=5, simulations=2_000_000))"
        ),
        **common,
    }


def warn_if_flagged(check: Mapping[str, Any]) -> None:
    if check["verdict"] == "flagged":
        warnings.warn(check["message"], EstimatorWarning, stacklevel=3)


# -- the cache ---------------------------------------------------------------


def refined_cache_path(
    estimator: TrainedEstimator,
    x: np.ndarray,
    group_index: np.ndarray,
    model_attrs: Mapping[str, Any],
    plan: Refinement,
) -> Path:
    """One file per estimator, data (rows and their cells), model and refinement
    settings: a rerun of the same fit (another seed, more draws) reuses it."""
    digest = hashlib.sha256()
    digest.update(estimator.checksum.encode())
    digest.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(group_index, dtype=np.int64).tobytes())
    described = json.dumps(
        {"model": model_attrs, "plan": plan.key()}, sort_keys=True, default=str
    )
    digest.update(described.encode())
    name = f"{estimator.simulator}-{digest.hexdigest()[:16]}.pt"
    return cache_dir() / "refined" / name


def load_refined(
    path: Path, simulator: Simulator
) -> tuple[TrainedEstimator, dict[str, Any]] | None:
    """The cached refined estimator and its record, or None (a broken file is
    ignored with a warning and refined again)."""
    if not path.exists():
        return None
    try:
        estimator = artifact.load(path, simulator)
        record = estimator.metadata["refinement_record"]
    except (EstimatorError, KeyError) as exc:
        warnings.warn(f"ignoring cached refined estimator: {exc}", stacklevel=3)
        return None
    estimator.source = str(path)
    return estimator, record


def save_refined(
    path: Path, estimator: TrainedEstimator, record: Mapping[str, Any]
) -> None:
    estimator.metadata["refinement_record"] = dict(record)
    estimator._checksum = None
    path.parent.mkdir(parents=True, exist_ok=True)
    estimator.save(path, overwrite=True)
    estimator.source = str(path)
