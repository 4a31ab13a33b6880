"""Where work runs: a Dask cluster (a `Client` or a scheduler address), local
forked processes, or this process.

The local pool is the one every caller uses (NUTS chains, posterior predictive
batches, training simulations, `fit_many`'s fits): forked workers inherit the
caller's function and tasks, results come back as they finish, a dead worker is
named with its task and its cause, and progress can be streamed back while tasks
run. Dask is imported only when a cluster is asked for.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.outputs import terminate_as_interrupt

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


Report = Callable[[Any], None]
"""What a task calls, where the caller asked for progress, to send a value to the
caller's `progress(position, value)` while the task runs."""


def forked_results(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    *,
    progress: Callable[[int, Any], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """`(position, function(*tasks[position]))` for each task as it finishes, on
    `workers` forked processes (here, in order, where `workers` or the tasks are
    1, or processes cannot be forked). The workers inherit `function` (a closure
    over a simulator, an estimator, arrays) and the tasks: only results are
    pickled, on their way back.

    Where the worker running a task dies, that task's result is a `WorkerDied` and
    a fresh worker takes the dead one's place; the other tasks run on undisturbed
    (a `ProcessPoolExecutor` breaks as a whole and fails them all). An exception
    raised by `function` is raised here, with the worker's traceback as its cause,
    and stops the others. With `progress`, each task runs as `function(report,
    *task)`, and each `report(value)` reaches `progress(position, value)` here as
    the results are waited for. Closing the iterator, Ctrl-C and SIGTERM stop the
    workers."""
    return _results(function, tasks, workers, progress, replace_dead=True)


def forked_map(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    *,
    progress: Callable[[int, Any], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """As `forked_results`, for tasks that are all needed: a worker that dies
    raises `WorkerDied`, naming the task and the cause, and stops the others."""
    return _results(function, tasks, workers, progress, replace_dead=False)


def _results(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    progress: Callable[[int, Any], None] | None,
    replace_dead: bool,
) -> Iterator[tuple[int, Any]]:
    def run(position: int, report: Report) -> Any:
        task = tasks[position]
        return function(report, *task) if progress is not None else function(*task)

    if min(workers, len(tasks)) <= 1 or not can_fork_workers():
        return _here(run, len(tasks), progress)
    return _forked(run, len(tasks), workers, progress, replace_dead)


def _here(
    run: Callable[[int, Report], Any],
    count: int,
    progress: Callable[[int, Any], None] | None,
) -> Iterator[tuple[int, Any]]:
    """The tasks one after another in this process; their exceptions as raised."""
    for position in range(count):
        report = functools.partial(progress, position) if progress else _ignore
        yield position, run(position, report)


def _ignore(value: Any) -> None:
    pass


WORKER_NAME = "sbi-plugins-worker"


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    position: int | None = None
    """The task it runs, None while idle."""
    fresh: bool = True
    """No task taken yet: one that dies now would die again."""


def _forked(
    run: Callable[[int, Report], Any],
    count: int,
    workers: int,
    progress: Callable[[int, Any], None] | None,
    replace_dead: bool,
) -> Iterator[tuple[int, Any]]:
    """The pool: each worker is sent a task's position (the task itself it
    inherited), answers with messages `(kind, position, value)`, kind "progress",
    "done" or "failed", and is sent the next position once it is done."""
    context = mp.get_context("fork")
    waiting = deque(range(count))
    pool: list[_Worker] = []

    def started() -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(theirs, run, [w.conn for w in pool]),
            name=WORKER_NAME,
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def replaced(worker: _Worker) -> _Worker:
        """A fresh worker in a dead one's place."""
        worker.position = None
        _stop(worker)
        pool[pool.index(worker)] = fresh = started()
        return fresh

    def hand_over(worker: _Worker) -> list[tuple[int, WorkerDied]]:
        """Give `worker` the next task. A worker found dead before it took it is
        replaced; the task goes back to the queue, unless the dead one was fresh
        (a worker that dies at once would again): then it is lost."""
        lost = []
        worker.position = None
        while waiting:
            position = waiting.popleft()
            try:
                worker.conn.send(position)
            except OSError:
                worker.process.join()
                if not worker.fresh:
                    waiting.appendleft(position)
                elif replace_dead:
                    lost.append(
                        (position, WorkerDied(position, worker.process.exitcode))
                    )
                else:
                    raise WorkerDied(position, worker.process.exitcode) from None
                worker = replaced(worker)
                continue
            worker.position, worker.fresh = position, False
            break
        return lost

    with terminate_as_interrupt():
        try:
            for _ in range(min(workers, count)):
                pool.append(started())
            for worker in list(pool):
                yield from hand_over(worker)
            while busy := [w for w in pool if w.position is not None]:
                ends = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                ready = set(wait(ends))
                for worker in busy:
                    if (
                        worker.conn not in ready
                        and worker.process.sentinel not in ready
                    ):
                        continue
                    event = _next_event(worker, progress)
                    if event is None:  # only progress so far
                        continue
                    position, (kind, value) = worker.position, event
                    assert position is not None
                    if kind == "failed":
                        worker.position = None  # idle: it is asked to stop
                        exc, text = value
                        exc.__cause__ = RemoteTraceback(text)
                        raise exc
                    if kind == "died":
                        if not replace_dead:
                            raise WorkerDied(position, value)
                        worker = replaced(worker)
                        value = WorkerDied(position, value)
                    lost = hand_over(worker)
                    yield position, value
                    yield from lost
        finally:
            for worker in pool:
                _stop(worker)


def _next_event(
    worker: _Worker, progress: Callable[[int, Any], None] | None
) -> tuple[str, Any] | None:
    """What a worker that woke us sent: progress is passed on; then `("done",
    result)`, `("failed", (exception, traceback))`, `("died", exitcode)` where
    it ended without an answer, or None while its task runs on. What a worker
    wrote just before it ended is still read."""
    exited = False
    while True:
        try:
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            break
        if message is not None:
            kind, position, value = message
            if kind != "progress":
                return kind, value
            if progress is not None:
                progress(position, value)
            continue
        if exited:
            break
        if worker.process.is_alive():
            return None
        exited = True
    worker.process.join()
    return "died", worker.process.exitcode


def _serve(
    conn: Connection, run: Callable[[int, Report], Any], siblings: list[Connection]
) -> None:
    """A worker's loop: run each task whose position it receives, send back the
    result or the exception, until told to stop or its parent is gone.

    It closes its copies of the parent's ends of its siblings' pipes, so that each
    pipe has one reader: a worker whose parent is gone then reads end-of-file and
    exits. It runs on one torch thread, set before any torch work: a forked child
    that enters an OpenMP parallel region its parent's thread team already used
    hangs (GNU OpenMP is not fork-safe), and one process per core is the point.
    Ctrl-C is the parent's to handle: it stops the workers; SIGTERM (how the
    parent stops a busy worker) ends it."""
    for sibling in siblings:
        sibling.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    while True:
        try:
            position = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if position is None:
            return

        def report(value: Any, position: int = position) -> None:
            conn.send(("progress", position, value))

        try:
            reply = ("done", position, run(position, report))
        except Exception as exc:
            reply = ("failed", position, _portable(exc))
        try:
            _answer(conn, reply)
        except OSError:  # the parent is gone
            return


def _answer(conn: Connection, reply: tuple[str, int, Any]) -> None:
    """Send a task's reply; a result that does not pickle is the task's failure."""
    try:
        conn.send(reply)
    except OSError:
        raise
    except Exception as exc:
        conn.send(("failed", reply[1], _portable(exc)))


def _portable(exc: Exception) -> tuple[Exception, str]:
    """The exception (or, if it does not make the round trip through pickle, its
    text) and its traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, text


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
