"""Training-simulation throughput: in one process, in local processes, and on a Dask
LocalCluster with 1 and 2 workers; and the scheduler's cost per chunk (issue 6).

    python benchmarks/simulation_throughput.py [--cookie 2000000 --ddm 200000]
        [--repeats 3] [--json results.json]

Every path runs the same seeded chunks (`simulate_training_data`); each figure is
the best of `--repeats` runs (the machine may be shared), after a warm-up run that
lets the workers import the simulators. The per-chunk overhead is measured with
chunks of one simulation, whose work is negligible: wall time over the number of
chunks, per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

import sbi_plugins
from sbi_plugins.estimators.simulation import (
    SIMULATION_CHUNK,
    plan_chunks,
    simulate_chunks,
)


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up: imports on the workers, first-touch allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def throughput(simulator, n: int, repeats: int, **where) -> dict[str, float]:
    chunks = plan_chunks(n)

    def run():
        simulate_chunks(simulator, 0, chunks, progress=False, **where)

    seconds = best_seconds(run, repeats)
    return {"simulations": n, "seconds": round(seconds, 4), "per_second": n / seconds}


def chunk_overhead(simulator, chunks: int, repeats: int, **where) -> dict[str, float]:
    plan = plan_chunks(chunks, 1)

    def run():
        simulate_chunks(simulator, 0, plan, progress=False, **where)

    seconds = best_seconds(run, repeats)
    return {
        "chunks": chunks,
        "seconds": round(seconds, 4),
        "ms_per_chunk": 1e3 * seconds / chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cookie", type=int, default=2_000_000)
    parser.add_argument("--ddm", type=int, default=200_000)
    parser.add_argument("--tiny-chunks", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    budgets = {"cookie": args.cookie, "ddm": args.ddm}
    sims = {name: sbi_plugins.get_simulator(name) for name in budgets}
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "load_average_before": os.getloadavg(),
            "chunk_size": SIMULATION_CHUNK,
        },
        "throughput": {},
        "overhead": {},
    }
    for name, sim in sims.items():
        n = budgets[name]
        row = results["throughput"].setdefault(name, {})
        row["in-process"] = throughput(sim, n, args.repeats, workers=1)
        row["2 local processes"] = throughput(sim, n, args.repeats, workers=2)
        print(name, json.dumps(row), flush=True)
    cookie = sims["cookie"]
    results["overhead"]["2 local processes"] = chunk_overhead(
        cookie, args.tiny_chunks, args.repeats, workers=2
    )
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            label = f"dask {workers} worker{'s' if workers > 1 else ''}"
            for name, sim in sims.items():
                results["throughput"][name][label] = throughput(
                    sim, budgets[name], args.repeats, client=client
                )
            results["overhead"][label] = chunk_overhead(
                cookie, args.tiny_chunks, args.repeats, client=client
            )
            print(
                label,
                json.dumps({k: v[label] for k, v in results["throughput"].items()}),
                flush=True,
            )
    results["machine"]["load_average_after"] = os.getloadavg()
    # one chunk's work, in-process, for the scaling arithmetic
    results["chunk_seconds"] = {
        name: SIMULATION_CHUNK / results["throughput"][name]["in-process"]["per_second"]
        for name in sims
    }
    print(json.dumps(results, indent=2, default=float))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
