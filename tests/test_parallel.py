"""The local fork pool: inherited state, results as they finish, progress streamed
back, dead workers named and replaced, and no worker left behind."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from sbi_plugins.parallel import (
    RemoteTraceback,
    WorkerDied,
    forked_map,
    forked_results,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        "fork" not in mp.get_all_start_methods(), reason="forked workers"
    ),
]


def _our_workers() -> list:
    return [p for p in mp.active_children() if p.name == "sbi-plugins-worker"]


def test_workers_inherit_what_does_not_pickle_and_results_come_back():
    """A closure over a lock and tasks holding a lambda: neither pickles, so
    neither went through a pipe; the results ran in other processes."""
    lock = threading.Lock()
    both_busy = mp.get_context("fork").Barrier(2)

    def task(offset, double):
        if offset < 2:  # the first two tasks meet: two workers, however loaded
            both_busy.wait(timeout=60)
        with lock:
            return double(offset), os.getpid()

    tasks = [(i, lambda x: 2 * x) for i in range(5)]
    done = dict(forked_map(task, tasks, 2))
    assert [done[i][0] for i in range(5)] == [0, 2, 4, 6, 8]
    assert os.getpid() not in {pid for _, pid in done.values()}
    assert len({pid for _, pid in done.values()}) == 2  # two workers, reused
    assert not _our_workers()


def test_one_worker_runs_the_tasks_here_in_order():
    done = list(forked_map(lambda i: (i, os.getpid()), [(i,) for i in range(3)], 1))
    assert done == [(i, (i, os.getpid())) for i in range(3)]


def test_results_come_as_they_finish():
    def task(seconds):
        time.sleep(seconds)
        return seconds

    order = [p for p, _ in forked_map(task, [(1.0,), (0.0,), (0.0,)], 2)]
    assert order[-1] == 0  # the slow first task finished last


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_reaches_the_caller_while_tasks_run(workers):
    """Each task reports three steps; the caller sees them all, in order per task,
    before that task's result."""
    seen: list[tuple[int, object]] = []

    def task(report, name):
        for step in range(3):
            report(step)
        return name

    def progress(position, value):
        seen.append((position, value))

    for position, name in forked_map(
        task, [("a",), ("b",), ("c",)], workers, progress=progress
    ):
        assert [v for p, v in seen if p == position] == [0, 1, 2]
        assert name == "abc"[position]
    assert len(seen) == 9


def _dies_on(task_name: str):
    if task_name == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return task_name


def test_a_dead_worker_costs_its_task_only_where_the_rest_may_go_on():
    tasks = [("a",), ("kill",), ("b",), ("c",), ("kill",), ("d",)]
    done = dict(forked_results(_dies_on, tasks, 2))
    assert sorted(done) == list(range(6))
    for position in (1, 4):
        assert isinstance(done[position], WorkerDied)
        assert done[position].position == position
        assert "SIGKILL" in str(done[position]) and "memory" in str(done[position])
    assert [done[i] for i in (0, 2, 3, 5)] == ["a", "b", "c", "d"]
    assert not _our_workers()


def test_a_dead_worker_stops_the_others_where_all_are_needed():
    """The sibling's long task is stopped, not waited for."""

    def task(name):
        if name == "slow":
            time.sleep(30)
        return _dies_on(name)

    started = time.perf_counter()
    with pytest.raises(WorkerDied, match=r"task 1: it was killed by SIGKILL"):
        list(forked_map(task, [("slow",), ("kill",)], 2))
    assert time.perf_counter() - started < 15
    assert not _our_workers()


def test_a_failing_task_raises_here_with_its_traceback_and_stops_the_others():
    def task(name):
        if name == "slow":
            time.sleep(30)
        if name == "raise":
            raise KeyError("bad task")
        return name

    started = time.perf_counter()
    with pytest.raises(KeyError, match="bad task") as raised:
        list(forked_results(task, [("slow",), ("raise",)], 2))
    assert time.perf_counter() - started < 15
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "in task" in str(raised.value.__cause__)
    assert not _our_workers()


def test_a_result_that_does_not_pickle_is_its_tasks_failure():
    with pytest.raises(Exception, match="pickle|lambda"):
        list(forked_map(lambda i: lambda: i, [(0,), (1,)], 2))
    assert not _our_workers()


def test_closing_the_iterator_stops_busy_workers():
    def task(seconds):
        time.sleep(seconds)
        return seconds

    results = forked_map(task, [(0.0,), (30.0,), (30.0,)], 2)
    assert next(results) == (0, 0.0)
    started = time.perf_counter()
    results.close()
    assert time.perf_counter() - started < 10
    assert not _our_workers()


def test_ctrl_c_stops_the_workers():
    """A KeyboardInterrupt in the caller (here from its progress callback, as from
    Ctrl-C while it waits) ends every worker, busy or not."""

    def task(report, seconds):
        report("started")
        time.sleep(seconds)
        return seconds

    def interrupt(position, value):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(forked_map(task, [(30.0,), (30.0,)], 2, progress=interrupt))
    assert not _our_workers()


def test_sigterm_stops_the_workers_and_the_default_action_is_back():
    """SIGTERM while the pool waits is raised like Ctrl-C (`Terminated`), the
    workers are stopped, and SIGTERM's default action is restored."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def task(report, seconds):
        report(os.getpid())
        time.sleep(seconds)
        return seconds

    def terminate_once_started(position, pid):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        list(forked_map(task, [(30.0,), (30.0,)], 2, progress=terminate_once_started))
    assert not _our_workers()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
