"""Simulations and fits on a real Dask cluster (a LocalCluster: scheduler here,
two worker processes on loopback) and in local processes."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import sbi_plugins
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.estimators.simulation import plan_chunks, simulate_chunks
from sbi_plugins.estimators.training import simulate_training_data

distributed = pytest.importorskip("distributed")

# a cluster that stops answering fails its test in minutes instead of stalling CI
pytestmark = pytest.mark.timeout(300)

FIT = {"pooling": "complete", "draws": 60, "tune": 60, "chains": 1, "seed": 11}


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, as on a small cluster."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def datasets(cookie_data):
    """Three small one-location data sets."""
    return {
        f"site{loc}": g.head(12).reset_index(drop=True)
        for loc, g in cookie_data.groupby("location")
        if loc <= 3
    }


def _same(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def _same_fit(a, b) -> bool:
    return all(
        np.array_equal(a[group][name].values, b[group][name].values)
        for group in ("posterior", "log_likelihood", "sample_stats")
        for name in a[group].data_vars
    )


def test_chunk_plan_covers_the_budget_in_fixed_chunks():
    assert plan_chunks(25, 10) == [(0, 10), (1, 10), (2, 5)]
    assert plan_chunks(20, 10) == [(0, 10), (1, 10)]
    with pytest.raises(SbiPluginsError, match="at least 1"):
        plan_chunks(0)


def test_local_processes_give_the_same_data_as_one_process(cookie):
    one = simulate_training_data(cookie, 45_000, seed=2, progress=False, workers=1)
    two = simulate_training_data(cookie, 45_000, seed=2, progress=False, workers=2)
    assert _same(one, two)
    assert len(one[0]) == 45_000


def test_cluster_gives_the_same_training_data_as_the_local_path(client, cookie):
    local = simulate_training_data(cookie, 45_000, seed=2, progress=False, workers=1)
    remote = simulate_training_data(
        cookie, 45_000, seed=2, progress=False, client=client
    )
    other_seed = simulate_training_data(
        cookie, 45_000, seed=3, progress=False, workers=1
    )
    by_address = simulate_training_data(
        cookie, 45_000, seed=2, progress=False, client=client.scheduler.address
    )
    assert _same(local, remote) and _same(local, by_address)
    assert not np.array_equal(local[0], other_seed[0])


def test_train_on_the_cluster_records_the_same_data(client, cookie):
    """`train(client=...)` trains on the very data the local path simulates: the
    same network weights, bit for bit."""
    options = dict(
        num_simulations=3000,
        seed=4,
        progress=False,
        hidden_features=8,
        max_num_epochs=2,
        training_batch_size=256,
    )
    remote = sbi_plugins.train(cookie, client=client, **options)
    local = sbi_plugins.train(cookie, workers=1, **options)
    weights = remote.net.state_dict()
    assert weights.keys() == local.net.state_dict().keys()
    assert all(torch.equal(v, local.net.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(remote.example_x, local.example_x)
    assert remote.metadata["training"]["device"] == "cpu"


def test_unreachable_scheduler_is_a_clear_error(cookie, monkeypatch):
    from sbi_plugins import parallel as cluster
    from sbi_plugins.parallel import ClusterError

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        simulate_training_data(
            cookie, 100, seed=0, progress=False, client="tcp://127.0.0.1:9"
        )


def _broken_simulate(theta, rng):
    raise ValueError("boom")


def test_a_failing_simulator_on_the_cluster_names_the_chunk(client, cookie):
    from sbi_plugins.parallel import ClusterError

    broken = dataclasses.replace(cookie, simulate=_broken_simulate)
    with pytest.raises(ClusterError, match=r"chunk \d+ of 'cookie' failed.*ValueError"):
        simulate_chunks(broken, 0, plan_chunks(300, 100), client=client, progress=False)


def _slow_simulate(theta, rng, markers: str):
    """Cookie chips, slowly, leaving a marker per call: which chunk (its first
    parameter value) ran, and how often."""
    Path(markers, f"{theta[0, 0]!r}-{uuid.uuid4().hex}").touch()
    time.sleep(0.4)
    return rng.poisson(theta[:, :1]).astype(float)


def test_a_killed_worker_loses_no_finished_chunk_and_its_chunk_is_rerun(
    client, cookie, tmp_path
):
    markers = tmp_path / "markers"
    markers.mkdir()
    slow = dataclasses.replace(
        cookie, simulate=functools.partial(_slow_simulate, markers=str(markers))
    )
    chunks = plan_chunks(1000, 100)
    pids = client.run(os.getpid)
    received: list[int] = []
    killed: dict[str, list[str]] = {}

    def kill_a_busy_worker(index: int) -> None:
        received.append(index)
        if len(received) == 2:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            worker = next(iter(busy))
            killed[worker] = list(busy[worker])
            os.kill(pids[worker], signal.SIGKILL)

    results = simulate_chunks(
        slow, 7, chunks, client=client, progress=False, on_chunk=kill_a_busy_worker
    )
    local = simulate_chunks(cookie, 7, chunks, workers=1, progress=False)
    assert killed, "no worker was killed mid-run"
    assert all(_same(r, s) for r, s in zip(results, local, strict=True))
    runs: dict[str, int] = {}
    for marker in markers.iterdir():
        first = marker.name.rsplit("-", 1)[0]
        runs[first] = runs.get(first, 0) + 1
    run_count = {i: runs[repr(local[i][0][0, 0])] for i, _ in chunks}
    # results that had arrived before the kill were kept, not recomputed ...
    assert all(run_count[i] == 1 for i in received[:2])
    # ... and the chunk the dead worker was running ran again elsewhere
    assert max(run_count.values()) == 2
    assert sorted(received) == [i for i, _ in chunks]


@pytest.mark.slow
def test_fit_many_on_the_cluster_equals_fitting_each_alone(
    client, datasets, tiny_cookie_estimator, recwarn
):
    bad = datasets["site1"].assign(chips=-1)
    outcomes = list(
        sbi_plugins.fit_many(
            {**datasets, "bad": bad},
            "cookie",
            client=client,
            estimator=tiny_cookie_estimator,
            progress=False,
            **FIT,
        )
    )
    fits, failures = sbi_plugins.collect_fits(outcomes)
    assert not [w for w in recwarn if "share torch" in str(w.message)]
    assert list(fits) == list(datasets)
    assert list(failures) == ["bad"]
    assert "DataError" in failures["bad"] and "negative" in failures["bad"]
    for key, data in datasets.items():
        alone = sbi_plugins.fit(
            data, "cookie", estimator=tiny_cookie_estimator, progress=False, **FIT
        )
        assert _same_fit(fits[key], alone), key
        assert fits[key].attrs["estimator_checksum"] == tiny_cookie_estimator.checksum


@pytest.mark.slow
def test_fit_many_reports_a_data_set_lost_with_its_worker_and_keeps_the_rest(
    client, datasets, tiny_cookie_estimator, monkeypatch
):
    """With no retries allowed, the data set a dead worker was fitting is reported
    lost, by name; the fits that finished, and the others, come back whole."""
    scheduler = client.cluster.scheduler
    monkeypatch.setattr(scheduler, "allowed_failures", 0)
    client.wait_for_workers(2, timeout=120)
    pids = client.run(os.getpid)
    many = {f"{k}-{r}": d for r in range(2) for k, d in list(datasets.items())[:2]}
    killed: list[str] = []
    outcomes = []
    for outcome in sbi_plugins.fit_many(
        many,
        "cookie",
        client=client,
        estimator=tiny_cookie_estimator,
        progress=False,
        **FIT,
    ):
        outcomes.append(outcome)
        if not killed:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            worker = next(iter(busy))
            killed.extend(busy[worker])
            os.kill(pids[worker], signal.SIGKILL)
    fits, failures = sbi_plugins.collect_fits(outcomes)
    assert sorted([*fits, *failures]) == sorted(many)
    assert failures, "the dead worker's data set was not reported"
    assert all("KilledWorker" in error for error in failures.values())
    assert all(repr(key) in error for key, error in failures.items())
    assert outcomes[0].ok and outcomes[0].key in fits
    lost_positions = {
        int(key.rsplit("-", 1)[1]) for key in killed if key.startswith("fit-")
    }
    assert {o.position for o in outcomes if not o.ok} <= lost_positions
    for key in list(fits)[:2]:
        alone = sbi_plugins.fit(
            many[key], "cookie", estimator=tiny_cookie_estimator, progress=False, **FIT
        )
        assert _same_fit(fits[key], alone), key


def _kill_workers_once(theta, rng, pids: list[int], marker: str, simulate):
    """The real simulator, except that the first call on the cluster kills every
    worker process (itself last), whatever each is doing: no worker that held the
    estimator is left."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return simulate(theta, rng)
    for pid in sorted(pids, key=lambda pid: pid == os.getpid()):
        os.kill(pid, signal.SIGKILL)
    raise AssertionError("this worker was killed")


@pytest.mark.slow
def test_fit_many_on_the_cluster_survives_losing_every_worker(
    client, datasets, tiny_cookie_estimator, cookie, tmp_path
):
    """The first fit to reach its posterior predictive kills both workers, so
    every fit is still pending and no worker holds the estimator any more; the
    nannies start fresh workers, the scheduler makes the estimator again there and
    reruns the fits: all come back, equal to each fitted alone. (Scattered data
    cannot be made again: every pending fit used to be cancelled.)"""
    client.wait_for_workers(2, timeout=120)
    pids = list(client.run(os.getpid).values())
    marker = tmp_path / "killed"
    deadly = dataclasses.replace(
        cookie,
        simulate=functools.partial(
            _kill_workers_once, pids=pids, marker=str(marker), simulate=cookie.simulate
        ),
    )
    outcomes = list(
        sbi_plugins.fit_many(
            datasets,
            deadly,
            client=client,
            estimator=tiny_cookie_estimator,
            progress=False,
            **FIT,
        )
    )
    fits, failures = sbi_plugins.collect_fits(outcomes)
    assert marker.exists(), "no worker was killed"
    assert not set(pids) & set(client.run(os.getpid).values())
    assert not failures and list(fits) == list(datasets)
    for key, data in datasets.items():
        alone = sbi_plugins.fit(
            data, "cookie", estimator=tiny_cookie_estimator, progress=False, **FIT
        )
        assert _same_fit(fits[key], alone), key


def test_a_cancelled_task_says_why():
    """A fit the scheduler cancels reports the scheduler's reason."""
    from distributed.client import FutureCancelledError

    from sbi_plugins.parallel import task_error

    class Cancelled:
        status = "cancelled"

        def result(self):
            raise FutureCancelledError("fit-cookie-1", "lost dependencies")

    assert "lost dependencies" in task_error(Cancelled())


@pytest.mark.slow
def test_fit_many_in_local_processes_equals_fitting_each_alone(
    datasets, tiny_cookie_estimator
):
    outcomes = sbi_plugins.fit_many(
        datasets,
        "cookie",
        workers=2,
        estimator=tiny_cookie_estimator,
        progress=False,
        **FIT,
    )
    fits, failures = sbi_plugins.collect_fits(outcomes)
    assert not failures and list(fits) == list(datasets)
    key, data = next(iter(datasets.items()))
    alone = sbi_plugins.fit(
        data, "cookie", estimator=tiny_cookie_estimator, progress=False, **FIT
    )
    assert _same_fit(fits[key], alone)


def _run_or_die(task: str):
    """A task that dies as it is told to, or returns its name and process."""
    if task == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if task == "exit":
        os._exit(3)
    if task == "raise":
        raise ValueError("bad task")
    return task, os.getpid()


def _our_workers() -> list:
    return [p for p in mp.active_children() if p.name == "sbi-plugins-worker"]


@pytest.mark.timeout(60)
def test_forked_map_names_the_task_whose_worker_died_and_the_cause():
    from sbi_plugins.parallel import RemoteTraceback, WorkerDied, forked_map

    tasks = [("fine",), ("kill",), ("fine",)]
    with pytest.raises(WorkerDied, match=r"task 1: it was killed by SIGKILL.*memory"):
        list(forked_map(_run_or_die, tasks, 2))
    with pytest.raises(WorkerDied, match="task 0: it exited with code 3"):
        list(forked_map(_run_or_die, [("exit",), ("fine",)], 2))
    with pytest.raises(ValueError, match="bad task") as raised:
        list(forked_map(_run_or_die, [("fine",), ("raise",)], 2))
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "_run_or_die" in str(raised.value.__cause__)
    done = dict(forked_map(_run_or_die, [("a",), ("b",), ("c",)], 2))
    assert [done[i][0] for i in range(3)] == ["a", "b", "c"]
    assert not _our_workers()


@pytest.mark.timeout(60)
def test_a_dead_local_worker_costs_only_its_own_data_set(
    datasets, monkeypatch, tmp_path
):
    """One worker dies fitting 'doomed' while the other is in the middle of 'busy'
    (held until the death is reported): 'doomed' fails with the cause, 'busy' and
    the rest finish, each run once, on a fresh worker where needed."""
    from sbi_plugins import batch as dist

    released = mp.get_context("fork").Event()

    def fake_fit(key, position, data, simulator, estimator, options):
        (tmp_path / f"{key}-{uuid.uuid4().hex}").touch()
        if key == "doomed":
            os.kill(os.getpid(), signal.SIGKILL)
        if key == "busy" and not released.wait(timeout=30):
            return dist.FitOutcome(key, position, error="never released")
        return dist.FitOutcome(key, position)

    monkeypatch.setattr(dist, "_fit_one", fake_fit)
    data = datasets["site1"]
    keys = ["busy", "doomed", "a", "b", "c"]
    outcomes = []
    for outcome in sbi_plugins.fit_many(
        dict.fromkeys(keys, data),
        "cookie",
        workers=2,
        likelihood="exact",
        progress=False,
    ):
        outcomes.append(outcome)
        if outcome.key == "doomed":
            released.set()
    fits, failures = sbi_plugins.collect_fits(outcomes)
    assert outcomes[0].key == "doomed"
    assert list(failures) == ["doomed"]
    assert "'doomed' died" in failures["doomed"]
    assert "SIGKILL" in failures["doomed"] and "memory" in failures["doomed"]
    assert list(fits) == ["busy", "a", "b", "c"]
    runs = sorted(marker.name.rsplit("-", 1)[0] for marker in tmp_path.iterdir())
    assert runs == sorted(keys)
    assert not _our_workers()


@pytest.mark.slow
def test_real_fits_outlive_a_local_worker_killed_mid_run(
    datasets, tiny_cookie_estimator, monkeypatch
):
    """End to end: the worker fitting 'doomed' is killed; the real fits of the
    other data sets come back equal to each fitted alone."""
    from sbi_plugins import batch as dist

    real_fit = dist._fit_one

    def dying_fit(key, *args):
        if key == "doomed":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fit(key, *args)

    monkeypatch.setattr(dist, "_fit_one", dying_fit)
    many = {"doomed": datasets["site1"], **datasets}
    fits, failures = sbi_plugins.collect_fits(
        sbi_plugins.fit_many(
            many,
            "cookie",
            workers=2,
            estimator=tiny_cookie_estimator,
            progress=False,
            **FIT,
        )
    )
    assert list(failures) == ["doomed"] and "SIGKILL" in failures["doomed"]
    assert list(fits) == list(datasets)
    for key, data in datasets.items():
        alone = sbi_plugins.fit(
            data, "cookie", estimator=tiny_cookie_estimator, progress=False, **FIT
        )
        assert _same_fit(fits[key], alone), key


def test_fit_many_refuses_one_data_set_and_parallel_chains(datasets):
    with pytest.raises(SbiPluginsError, match="several data sets"):
        sbi_plugins.fit_many(datasets["site1"], "cookie")
    with pytest.raises(SbiPluginsError, match="cores"):
        sbi_plugins.fit_many(datasets, "cookie", cores=4)
    with pytest.raises(SbiPluginsError, match="no data sets"):
        sbi_plugins.fit_many({}, "cookie")
    with pytest.raises(SbiPluginsError, match="likelihood must be"):
        sbi_plugins.fit_many(datasets, "cookie", likelihood="approximate")


def test_cli_train_passes_scheduler_workers_and_device(
    monkeypatch, tmp_path, capsys, tiny_cookie_estimator
):
    from sbi_plugins.cli import main

    calls = []

    def fake_train(simulator, **kwargs):
        calls.append(kwargs)
        return tiny_cookie_estimator

    monkeypatch.setattr("sbi_plugins.estimators.train", fake_train)
    out = tmp_path / "e.pt"
    argv = ["train", "cookie", "--scheduler", "tcp://10.0.0.5:8786", "--out", out]
    assert main([*map(str, argv), "--workers", "3", "--device", "auto"]) == 0
    assert calls[0]["client"] == "tcp://10.0.0.5:8786"
    assert calls[0]["workers"] == 3 and calls[0]["device"] == "auto"
    assert out.exists()


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
        (["--workers", "0"], "workers must be at least 1"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else [], "CUDA"),
    ],
)
def test_cli_train_cluster_errors_are_one_line(
    monkeypatch, tmp_path, capsys, extra, pattern
):
    from sbi_plugins import parallel as cluster
    from sbi_plugins.cli import main

    if not extra:
        pytest.skip("a GPU is present")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    argv = ["train", "cookie", "--num-simulations", "500", "--out", tmp_path / "e.pt"]
    assert main([*map(str, argv), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sbi-plugins: error: "), err
    assert pattern in lines[0]
    assert not (tmp_path / "e.pt").exists()


def test_fit_many_warns_when_fits_would_share_a_process(datasets):
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as threaded,
        pytest.warns(UserWarning, match="share torch's random state"),
    ):
        outcomes = sbi_plugins.fit_many(
            datasets, "cookie", client=threaded, likelihood="exact", progress=False
        )
    outcomes.close()
