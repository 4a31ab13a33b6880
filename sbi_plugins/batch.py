"""Many independent fits, spread over a Dask cluster or local processes.

The estimator is resolved (and trained, if need be) once, here, then sent to each
worker once; each data set is one task that runs `fit` with its chains one after
another (a Dask worker is a daemonic process and may not fork chain processes).
Results come back as they finish; a data set whose fit fails, or whose worker dies
(locally) or keeps dying (on Dask, past its allowed retries), is reported for that
data set, and the others are kept.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz as az
import pandas as pd
from tqdm.auto import tqdm

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.estimators import TrainedEstimator, resolve_estimator
from sbi_plugins.parallel import (
    WorkerDied,
    exit_cause,
    finished_in_turn,
    forked_results,
    get_client,
    local_workers,
    task_error,
)
from sbi_plugins.plugin.registry import get_simulator

Dataset = pd.DataFrame | str | Path


@dataclass
class FitOutcome:
    """One data set's result: its InferenceData, or the error that stopped it."""

    key: Hashable
    position: int
    idata: az.InferenceData | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def fit_many(
    datasets: Mapping[Hashable, Dataset] | Sequence[Dataset],
    simulator: str | Simulator,
    *,
    client: Any = None,
    workers: int | None = None,
    estimator: TrainedEstimator | str | Path | None = None,
    likelihood: str = "neural",
    progress: bool = True,
    **fit_options: Any,
) -> Iterator[FitOutcome]:
    """Fit every data set (a mapping key -> DataFrame or CSV path, or a sequence,
    keyed 0..n-1) with the same model; yield a `FitOutcome` per data set as it
    finishes.

    On `client`'s Dask cluster (a Client or a scheduler address) when given, else in
    `workers` local processes (default: one per core), else here. `fit_options` are
    `fit`'s (group, pooling, draws, tune, chains, seed, ...); with the same seed each
    result equals `fit` on that data set alone. `collect_fits` gathers the stream.
    """
    items = _keyed(datasets)
    sim = get_simulator(simulator)
    if fit_options.get("cores") not in (None, 1):
        raise SbiPluginsError(
            "fit_many runs each fit's chains one after another (cores=1) and spreads "
            "the data sets over workers instead; drop the cores option"
        )
    if "data" in fit_options or "simulator" in fit_options:
        raise SbiPluginsError("pass the data sets and the simulator positionally")
    if likelihood not in ("neural", "exact"):
        raise SbiPluginsError(
            f"likelihood must be 'neural' or 'exact', got {likelihood!r}"
        )
    fitted = None
    if likelihood == "neural":
        fitted = resolve_estimator(sim, estimator, progress=progress)
    options = {
        **fit_options,
        "likelihood": likelihood,
        "cores": 1,
        "progress": False,
    }
    if client is not None:
        dask_client = get_client(client)
        warn_if_workers_share_processes(dask_client)
        stream = _on_dask(
            dask_client, items, sim, fitted, options, dask_client is not client
        )
    else:
        n = local_workers(workers, len(items))
        if n == 1:  # the fits run here, one after another: their chains may fork
            options["cores"] = fit_options.get("cores")
        stream = _on_processes(items, sim, fitted, options, n)
    return _with_progress(stream, len(items), sim.name, progress)


def warn_if_workers_share_processes(client: Any) -> None:
    """Fits running side by side in one process share Pyro's and torch's global
    random state, so their draws would depend on timing: say so."""
    threads = client.nthreads()
    pids = client.run(os.getpid)
    if any(n > 1 for n in threads.values()) or len(set(pids.values())) < len(pids):
        warnings.warn(
            "some Dask workers run several tasks in one process; fits that share a "
            "process share torch's random state and are not reproducible. Start "
            "workers with one thread each in their own process (`dask worker "
            "--nthreads 1 --nworkers N`, LocalCluster(threads_per_worker=1, "
            "processes=True))",
            stacklevel=3,
        )


def collect_fits(
    outcomes: Iterator[FitOutcome],
) -> tuple[dict[Hashable, az.InferenceData], dict[Hashable, str]]:
    """(fits, failures), each in the data sets' order."""
    done = sorted(outcomes, key=lambda o: o.position)
    fits = {o.key: o.idata for o in done if o.ok}
    failures = {o.key: o.error for o in done if not o.ok}
    return fits, failures  # type: ignore[return-value]


def _keyed(
    datasets: Mapping[Hashable, Dataset] | Sequence[Dataset],
) -> list[tuple[int, tuple[Hashable, Dataset]]]:
    if isinstance(datasets, pd.DataFrame | str | Path):
        raise SbiPluginsError(
            "fit_many takes several data sets: a dict name -> DataFrame (or CSV "
            "path), or a list; for one data set use fit"
        )
    pairs = list(
        datasets.items() if isinstance(datasets, Mapping) else enumerate(datasets)
    )
    if not pairs:
        raise SbiPluginsError("fit_many got no data sets")
    return list(enumerate(pairs))


def _fit_one(
    key: Hashable,
    position: int,
    data: Dataset,
    simulator: Simulator,
    estimator: TrainedEstimator | None,
    options: dict[str, Any],
) -> FitOutcome:
    """Run one fit; any error becomes this data set's outcome, not the caller's."""
    from sbi_plugins.runner import fit

    started = time.perf_counter()
    try:
        idata = fit(data, simulator, estimator=estimator, **options)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, SbiPluginsError):
            error += f" (at {Path(where.filename).name}:{where.lineno})"
        return FitOutcome(key, position, error=error, seconds=_since(started))
    return FitOutcome(key, position, idata=idata, seconds=_since(started))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _with_progress(
    stream: Iterator[FitOutcome], total: int, name: str, progress: bool
) -> Iterator[FitOutcome]:
    failed = 0
    with tqdm(
        total=total, desc=f"fitting {name}", unit="fit", disable=not progress
    ) as bar:
        for outcome in stream:
            failed += not outcome.ok
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed)
            yield outcome


def _on_processes(
    items: list[tuple[int, tuple[Hashable, Dataset]]],
    simulator: Simulator,
    estimator: TrainedEstimator | None,
    options: dict[str, Any],
    workers: int,
) -> Iterator[FitOutcome]:
    """Forked processes inherit the simulator, the estimator and the data sets:
    nothing is pickled but each result. A worker that dies (out of memory, killed)
    costs its own data set only: a fresh process takes its place and the other
    fits go on. One worker: the fits run here."""

    def fit(key: Hashable, position: int, data: Dataset) -> FitOutcome:
        return _fit_one(key, position, data, simulator, estimator, options)

    tasks = [(key, i, data) for i, (key, data) in items]
    with closing(forked_results(fit, tasks, workers)) as results:
        for position, result in results:
            if isinstance(result, WorkerDied):
                i, (key, _) = items[position]
                error = (
                    f"the worker process fitting data set {key!r} died: "
                    f"{exit_cause(result.exitcode)}; the other data sets went on"
                )
                result = FitOutcome(key, i, error=error)
            yield result


def _on_dask(
    client: Any,
    items: list[tuple[int, tuple[Hashable, Dataset]]],
    simulator: Simulator,
    estimator: TrainedEstimator | None,
    options: dict[str, Any],
    close: bool,
) -> Iterator[FitOutcome]:
    """Each data set is a task; the estimator is one more, which they depend on.

    The estimator is a task (its value held in the graph), not scattered data: the
    scheduler can recompute a task whose result was lost with its workers, but not
    scattered data, and lost scattered data cancels every fit still pending. So a
    worker that joins later fetches the estimator from a peer, or recomputes it
    when no holder is left. A fit whose worker dies is rerun elsewhere, up to
    Dask's `distributed.scheduler.allowed-failures`; then it is reported as failed
    for that data set."""
    run = uuid.uuid4().hex[:8]
    shared = None
    if estimator is not None:
        shared = client.submit(
            _estimator, estimator, key=f"estimator-{simulator.name}-{run}", pure=False
        )
    where: dict[str, tuple[int, Hashable]] = {}
    futures = []
    for i, (key, data) in items:
        future = client.submit(
            _fit_one,
            key,
            i,
            data,
            simulator,
            shared,
            options,
            key=f"fit-{simulator.name}-{run}-{i}",
            pure=False,
        )
        where[future.key] = (i, key)
        futures.append(future)
    pending = set(futures)
    try:
        for future, result in finished_in_turn(futures):
            pending.discard(future)
            i, key = where[future.key]
            if result is None:
                error = f"data set {key!r} lost on the cluster: {task_error(future)}"
                result = FitOutcome(key, i, error=error)
            yield result
    finally:
        if pending:
            client.cancel(list(pending))
        if shared is not None:
            shared.release()
        if close:
            client.close()


def _estimator(estimator: TrainedEstimator) -> TrainedEstimator:
    """The estimator as the result of a task, so that Dask can make it again."""
    return estimator
