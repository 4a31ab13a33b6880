"""Training simulations in seeded chunks: in this process, in local processes, or on
a Dask cluster.

Chunk `i` of a training set with seed `s` draws from `np.random.default_rng([s, i])`
and nothing else, and the chunks are put back in index order. So the data depend on
the seed and the chunk size only: not on the number of workers, on which chunk
finishes first, or on a chunk that ran twice because its worker died.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sbi_plugins.contract import Simulator, outside_support
from sbi_plugins.errors import EstimatorError, SbiPluginsError
from sbi_plugins.parallel import (
    ClusterError,
    connected,
    finished_in_turn,
    forked_map,
    local_workers,
    task_error,
)

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


MAX_PROBE_CORNERS = 64
"""Box corners `check_simulator_output` tries at most (a random subset beyond)."""
PROBE_REPEATS = 4
"""Tries per probe point: a point counts as broken only if every try is NaN/inf."""


def probe_points(simulator: Simulator, rng: np.random.Generator) -> np.ndarray:
    """The training box's corners (at most `MAX_PROBE_CORNERS`) and its centre:
    where a simulator is most likely to break, and that training will visit."""
    lower, upper = simulator.lower, simulator.upper
    d = len(lower)
    if 2**d <= MAX_PROBE_CORNERS:
        bits = np.array(list(itertools.product((0, 1), repeat=d)), dtype=bool)
    else:
        bits = rng.integers(0, 2, size=(MAX_PROBE_CORNERS, d)).astype(bool)
    corners = np.where(bits, upper, lower)
    return np.vstack([corners, (lower + upper) / 2])


def check_simulator_output(simulator: Simulator, seed: int = 0) -> None:
    """Simulate a few rows at the box's corners and centre and refuse, in one line,
    output that training would choke on later (an IndexError deep inside it) or
    learn wrongly: a shape other than (rows, observables), non-numbers, a point
    where every try is NaN or infinite, values outside an observable's kind and
    support, or a theta changed in place."""
    name = simulator.name
    hint = f"`sbi-plugins check {name}` tells more"
    rng = np.random.default_rng([seed, 2**31])
    points = probe_points(simulator, rng)
    theta = np.repeat(points, PROBE_REPEATS, axis=0)
    given = theta.copy()
    n, n_obs = theta.shape[0], len(simulator.observables)
    try:
        raw = np.asarray(simulator.simulate(given, rng))
    except Exception as exc:
        raise EstimatorError(
            f"simulator {name!r}: simulate raised {type(exc).__name__}: {exc} on "
            f"{n} rows at the training box's corners and centre; {hint}"
        ) from exc
    if raw.shape != (n, n_obs):
        raise EstimatorError(
            f"simulator {name!r}: simulate returned shape {raw.shape} for {n} "
            f"parameter rows; expected {(n, n_obs)} (one row per parameter row, one "
            f"column per observable {simulator.observable_names}); {hint}"
        )
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_) or (
        np.issubdtype(raw.dtype, np.complexfloating)
    ):
        raise EstimatorError(
            f"simulator {name!r}: simulate returned dtype {raw.dtype}; expected real "
            f"numbers; {hint}"
        )
    if not np.array_equal(given, theta):
        raise EstimatorError(
            f"simulator {name!r}: simulate changed its theta argument in place; work "
            f"on a copy (training pairs each parameter row with its output); {hint}"
        )
    x = raw.astype(np.float64)
    finite = np.isfinite(x).all(axis=1).reshape(len(points), PROBE_REPEATS)
    dead = ~finite.any(axis=1)
    if dead.any():
        where = points[dead][:3].round(6).tolist()
        raise EstimatorError(
            f"simulator {name!r}: simulate returned NaN or infinite output in all "
            f"{PROBE_REPEATS} tries at theta {where} ({simulator.parameter_names}), "
            f"inside the training box; fix the simulator or narrow the box; {hint}"
        )
    outside = outside_support(simulator, x)
    if outside.any():
        j = int(np.flatnonzero(outside.any(axis=0))[0])
        obs = simulator.observables[j]
        allowed = (
            f"codes {list(obs.codes)}"
            if obs.kind == "choice"
            else f"integers in [{obs.lower:g}, {obs.upper:g}]"
            if obs.kind == "count"
            else f"values in ({obs.lower:g}, {obs.upper:g})"
        )
        raise EstimatorError(
            f"simulator {name!r}: simulate returned {obs.name} values "
            f"{np.unique(x[outside[:, j], j])[:3].tolist()}, outside the {obs.kind} "
            f"observable's declared {allowed}; {hint}"
        )


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
        where = _on_processes(simulator, seed, chunks, n)
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
    """Forked processes inherit the simulator, so it need not pickle (one worker:
    the chunks run here)."""
    tasks = [(seed, index, size) for index, size in chunks]
    simulate = functools.partial(simulate_chunk, simulator)
    with closing(forked_map(simulate, tasks, workers)) as done:
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
