"""Where work runs: a Dask cluster (a `Client` or a scheduler address) or local
processes. Dask is imported only when a cluster is asked for."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from sbi_plugins.errors import SbiPluginsError

CONNECT_TIMEOUT = "10s"
"""How long to wait for a scheduler before giving up with a message."""

STOP_TIMEOUT = 5.0
"""Seconds a local worker gets to exit when stopped, before it is killed."""


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


class WorkerDied(ClusterError):
    """A local worker process ended while it ran a task, so the task's result is
    lost: killed (the out-of-memory killer, a signal) or exited from native code."""

    def __init__(self, position: int, exitcode: int | None) -> None:
        self.position = position
        self.exitcode = exitcode
        super().__init__(
            f"a local worker process died running task {position}: "
            f"{exit_cause(exitcode)}"
        )

    def __reduce__(self) -> tuple[type, tuple[int, int | None]]:
        return type(self), (self.position, self.exitcode)


def exit_cause(exitcode: int | None) -> str:
    """Why a process ended, in words: the signal's name rather than a negative
    number, and the usual suspect for SIGKILL."""
    if exitcode is None:
        return "it stopped without an exit status"
    if exitcode >= 0:
        return f"it exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if -exitcode == signal.SIGKILL:
        return (
            f"it was killed by {name} (the signal the out-of-memory killer sends: "
            "was memory short?)"
        )
    return f"it was killed by {name}"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as its cause."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Worker:
    process: Any
    conn: Connection
    position: int | None = None
    fresh: bool = True


def _serve(
    conn: Connection,
    function: Callable[..., Any],
    state: Any,
    siblings: list[Connection],
) -> None:
    """A worker's loop: run `function(state, *task)` for each task received, send
    back the result or the exception, until told to stop.

    It closes its copies of the parent's ends of its siblings' pipes, so that each
    pipe has one reader: a worker whose parent is gone then reads end-of-file and
    exits. It runs on one torch thread, set before any torch work: a forked child
    that enters an OpenMP parallel region its parent's thread team already used
    hangs (GNU OpenMP is not fork-safe), and one process per core is the point.
    Ctrl-C is the parent's to handle: it stops the workers."""
    for sibling in siblings:
        sibling.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        position, task = message
        try:
            reply = (position, True, function(state, *task))
        except Exception as exc:
            reply = (position, False, _portable(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # a result that does not pickle
            conn.send((position, False, _portable(exc)))


def _portable(exc: Exception) -> tuple[Exception, str]:
    """The exception (or, if it does not make the round trip through pickle, its
    text) and its traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, text


def forked_results(
    function: Callable[..., Any], state: Any, tasks: list[tuple], workers: int
) -> Iterator[tuple[int, Any]]:
    """`(position, function(state, *task))` for each task as it finishes, on
    `workers` forked processes that inherit `state` (a simulator, an estimator,
    arrays): only the tasks and results are pickled.

    Where the worker running a task dies, that task's result is a `WorkerDied` and
    a fresh worker takes the dead one's place; the other workers' tasks run on
    undisturbed (a `ProcessPoolExecutor` breaks as a whole and fails them all). An
    exception raised by `function` is raised here. Closing the iterator stops the
    workers."""
    context = mp.get_context("fork")
    waiting = deque(enumerate(tasks))
    pool: list[_Worker] = []

    def started() -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(theirs, function, state, [w.conn for w in pool]),
            name="sbi-plugins-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def hand_over(worker: _Worker) -> list[tuple[int, WorkerDied]]:
        """Give `worker` the next task. A worker found dead before it took it is
        replaced; the task goes back to the queue, unless the dead one was fresh
        (a worker that dies at once would again): then it is lost."""
        lost = []
        worker.position = None
        while waiting:
            position, task = waiting.popleft()
            try:
                worker.conn.send((position, task))
            except OSError:
                worker.process.join()
                if worker.fresh:
                    lost.append(
                        (position, WorkerDied(position, worker.process.exitcode))
                    )
                else:
                    waiting.appendleft((position, task))
                _stop(worker)
                pool[pool.index(worker)] = worker = started()
                continue
            worker.position, worker.fresh = position, False
            break
        return lost

    try:
        for _ in range(min(workers, len(tasks))):
            pool.append(started())
        for worker in list(pool):
            yield from hand_over(worker)
        while busy := [w for w in pool if w.position is not None]:
            ends = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = set(wait(ends))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                position = worker.position
                assert position is not None
                try:
                    reply = worker.conn.recv() if worker.conn.poll() else None
                except (EOFError, OSError):
                    reply = None
                if reply is None:  # it died running the task
                    worker.process.join()
                    died = WorkerDied(position, worker.process.exitcode)
                    worker.position = None
                    _stop(worker)
                    pool[pool.index(worker)] = worker = started()
                    lost = hand_over(worker)
                    yield position, died
                    yield from lost
                    continue
                _, ok, value = reply
                if not ok:
                    exc, text = value
                    exc.__cause__ = RemoteTraceback(text)
                    raise exc
                lost = hand_over(worker)
                yield position, value
                yield from lost
    finally:
        for worker in pool:
            _stop(worker)


def _stop(worker: _Worker) -> None:
    """End a worker: an idle one is asked to stop, a busy one (whose result nobody
    waits for any more) is terminated."""
    if worker.position is None:
        with suppress(OSError):
            worker.conn.send(None)
    else:
        worker.process.terminate()
    worker.process.join(timeout=STOP_TIMEOUT)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.conn.close()


def forked_map(
    function: Callable[..., Any], state: Any, tasks: list[tuple], workers: int
) -> Iterator[tuple[int, Any]]:
    """`(position, function(state, *task))` for each task as it finishes, on
    `workers` forked processes that inherit `state` (a simulator, arrays): only the
    tasks and results are pickled. A worker that dies raises `WorkerDied`, naming
    the task and the cause. Closing the iterator cancels what has not run."""
    with closing(forked_results(function, state, tasks, workers)) as results:
        for position, result in results:
            if isinstance(result, WorkerDied):
                raise result
            yield position, result


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
    """What went wrong with a Dask future that did not finish; for a cancelled
    one, the scheduler's reason (lost dependencies, already forgotten)."""
    if future.status == "error":
        exc = future.exception()
        return f"{type(exc).__name__}: {exc}"
    if future.status == "cancelled":
        try:
            future.result()
        except CancelledError as exc:
            return f"task cancelled: {exc}".rstrip(".")
    return f"task {future.status}"
