"""Training simulations in seeded chunks: in this process, in local processes, or on
a Dask cluster.

Chunk `i` of a training set with seed `s` draws from `np.random.default_rng([s, i])`
and nothing else, and the chunks are put back in index order. So the data depend on
the seed and the chunk size only: not on the number of workers, on which chunk
finishes first, or on a chunk that ran twice because its worker died.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sbi_plugins.cluster import (
    ClusterError,
    connected,
    finished_in_turn,
    forked_map,
    local_workers,
    task_error,
)
from sbi_plugins.contract import Simulator
from sbi_plugins.errors import SbiPluginsError

SIMULATION_CHUNK = 10_000
"""Simulations per seeded chunk: part of what the seed means, so changing it changes
the training data. Large enough that a chunk of a cheap simulator (cookie: about a
millisecond) still outweighs the scheduler's per-task cost (docs/scaling.md)."""

LOCAL_PROCESSES_FROM = 4
"""Chunks from which `workers=None` starts local processes: below that, starting a
pool costs more than it saves."""

ChunkResult = tuple[np.ndarray, np.ndarray]


def plan_chunks(
    num_simulations: int, chunk_size: int = SIMULATION_CHUNK
) -> list[tuple[int, int]]:
    """(index, size) of every chunk: full chunks, then the remainder."""
    if num_simulations < 1 or chunk_size < 1:
        raise SbiPluginsError(
            f"num_simulations and chunk_size must be at least 1, got "
            f"{num_simulations} and {chunk_size}"
        )
    full, rest = divmod(num_simulations, chunk_size)
    sizes = [chunk_size] * full + ([rest] if rest else [])
    return list(enumerate(sizes))


def simulate_chunk(
    simulator: Simulator, seed: int, index: int, size: int
) -> ChunkResult:
    """Chunk `index` of a seeded training set: its own generator, so chunks can run
    anywhere, in any order."""
    rng = np.random.default_rng([seed, index])
    theta = simulator.sample_training_prior(size, rng)
    x = np.asarray(simulator.simulate(theta, rng), dtype=np.float64)
    return theta, x


def simulate_chunks(
    simulator: Simulator,
    seed: int,
    chunks: list[tuple[int, int]],
    *,
    client: Any = None,
    workers: int | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> list[ChunkResult]:
    """Run the chunks (on `client`'s cluster, else in local processes, else here)
    and return their results in chunk order. `on_chunk(index)` is called as each
    chunk's result arrives here."""
    total = sum(size for _, size in chunks)
    sizes = dict(chunks)
    results: dict[int, ChunkResult] = {}
    stack = ExitStack()
    if client is not None:
        where = _on_dask(
            stack.enter_context(connected(client)), simulator, seed, chunks
        )
    else:
        if workers is None and len(chunks) < LOCAL_PROCESSES_FROM:
            workers = 1
        n = local_workers(workers, len(chunks))
        where = (
            _on_processes(simulator, seed, chunks, n)
            if n > 1
            else ((i, simulate_chunk(simulator, seed, i, s)) for i, s in chunks)
        )
    stack.enter_context(closing(where))  # cancels what is left, then disconnects
    with (
        stack,
        tqdm(
            total=total,
            desc=f"simulating {simulator.name}",
            unit="sim",
            disable=not progress,
        ) as bar,
    ):
        for index, result in where:
            results[index] = result
            bar.update(sizes[index])
            if on_chunk is not None:
                on_chunk(index)
    return [results[i] for i, _ in chunks]


def _on_processes(
    simulator: Simulator, seed: int, chunks: list[tuple[int, int]], workers: int
) -> Iterator[tuple[int, ChunkResult]]:
    """Forked processes inherit the simulator, so it need not pickle."""
    tasks = [(seed, index, size) for index, size in chunks]
    with closing(forked_map(simulate_chunk, simulator, tasks, workers)) as done:
        for position, result in done:
            yield chunks[position][0], result


def _on_dask(
    client: Any, simulator: Simulator, seed: int, chunks: list[tuple[int, int]]
) -> Iterator[tuple[int, ChunkResult]]:
    """One task per chunk; each result is fetched and released as it finishes, so a
    worker lost later costs only its unfinished chunks, which the scheduler reruns
    (same generator, same data) elsewhere."""
    run = uuid.uuid4().hex[:8]
    futures = client.map(
        simulate_chunk,
        [simulator] * len(chunks),
        [seed] * len(chunks),
        [i for i, _ in chunks],
        [size for _, size in chunks],
        key=[f"simulate-{simulator.name}-{run}-{i}" for i, _ in chunks],
        pure=False,
    )
    index_of = {f.key: i for f, (i, _) in zip(futures, chunks, strict=True)}
    pending = set(futures)
    try:
        for future, result in finished_in_turn(futures):
            pending.discard(future)
            index = index_of[future.key]
            if result is None:
                raise ClusterError(
                    f"simulation chunk {index} of {simulator.name!r} failed on the "
                    f"cluster: {task_error(future)}"
                )
            yield index, result
    finally:
        if pending:
            client.cancel(list(pending))
