"""Where work runs: a Dask cluster (a `Client` or a scheduler address) or local
processes. Dask is imported only when a cluster is asked for."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from sbi_plugins.errors import SbiPluginsError

CONNECT_TIMEOUT = "10s"
"""How long to wait for a scheduler before giving up with a message."""


class ClusterError(SbiPluginsError):
    """The cluster cannot be reached, or a task on it failed."""


def get_client(client: Any) -> Any:
    """A `dask.distributed.Client` from a client or a scheduler address."""
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise ClusterError(
            "running on a cluster needs dask.distributed: "
            "pip install 'dask[distributed]'"
        ) from exc
    if isinstance(client, Client):
        return client
    if isinstance(client, str):
        try:
            return Client(client, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {client!r} ({exc}); start one "
                "with `dask scheduler` or check the address"
            ) from exc
    raise ClusterError(
        f"client must be a dask.distributed.Client or a scheduler address such as "
        f"'tcp://host:8786', got {type(client).__name__}"
    )


@contextmanager
def connected(client: Any) -> Iterator[Any]:
    """A Client for the duration of the block; one made here from an address is
    closed after it, one passed in stays open for its owner."""
    dask_client = get_client(client)
    try:
        yield dask_client
    finally:
        if dask_client is not client:
            dask_client.close()


def can_fork_workers() -> bool:
    """Forked workers inherit the simulator and estimator instead of pickling them;
    a daemonic process (a Dask or multiprocessing worker) may not start children."""
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def local_workers(workers: int | None, tasks: int) -> int:
    """How many local processes: `workers`, else one per core; never more than the
    tasks, and 1 (run in this process) where processes cannot be started."""
    if workers is not None and workers < 1:
        raise SbiPluginsError(f"workers must be at least 1, got {workers}")
    wanted = workers or os.cpu_count() or 1
    if not can_fork_workers():
        return 1
    return max(1, min(wanted, tasks))


def process_pool(
    workers: int, initializer: Any, initargs: tuple
) -> ProcessPoolExecutor:
    """A forked pool whose workers receive `initargs` by inheritance (not pickled).

    Each worker runs on one torch thread, set before any torch work: a forked child
    that enters an OpenMP parallel region its parent's thread team already used
    hangs (GNU OpenMP is not fork-safe), and one process per core is the point."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("fork"),
        initializer=_single_threaded,
        initargs=(initializer, initargs),
    )


def _single_threaded(initializer: Any, initargs: tuple) -> None:
    torch.set_num_threads(1)
    initializer(*initargs)


_STATE: Any = None


def _adopt_state(state: Any) -> None:
    global _STATE
    _STATE = state


def _with_state(function: Callable[..., Any], task: tuple) -> Any:
    return function(_STATE, *task)


def forked_map(
    function: Callable[..., Any], state: Any, tasks: list[tuple], workers: int
) -> Iterator[tuple[int, Any]]:
    """`(position, function(state, *task))` for each task as it finishes, on
    `workers` forked processes that inherit `state` (a simulator, arrays): only the
    tasks and results are pickled. Closing the iterator cancels what has not run."""
    from concurrent.futures import as_completed

    with process_pool(workers, _adopt_state, (state,)) as pool:
        futures = {
            pool.submit(_with_state, function, task): i for i, task in enumerate(tasks)
        }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()


def finished_in_turn(futures: list[Any]) -> Iterator[tuple[Any, Any]]:
    """`(future, result)` for Dask futures in the order they finish; the result is
    None where the task failed (see `task_error`). Each result is fetched here, one at
    a time, and the future released before the next: `as_completed(with_results=True)`
    fetches in background batches, and releasing a key while such a batch is in
    flight can leave it waiting forever (dask/distributed#7331; a CI run hung so)."""
    from distributed import as_completed

    for future in as_completed(futures):
        result = future.result() if future.status == "finished" else None
        yield future, result
        future.release()


def task_error(future: Any) -> str:
    """What went wrong with a Dask future that did not finish."""
    if future.status == "error":
        exc = future.exception()
        return f"{type(exc).__name__}: {exc}"
    return f"task {future.status}"
