"""The posterior predictive: simulated data sets at posterior draws, from the simulator
itself (not the network: that is what checks the network).

Draws are simulated in batches, each with its own generator `default_rng([seed, 1,
batch])`, so the result depends on the seed only, not on how many processes ran the
batches. A compiled simulator such as the DDM's runs single-threaded, so batches go
to forked local processes, one per core: a DDM 10 x 100 fit's 2 million predictive
trials take half the time on two cores.

A predictive larger than `PREDICTIVE_ROWS` (asked for: the default is thinned to
fit) is not simulated at once: it comes back as dask arrays whose blocks are the
same seeded batches, simulated when read. Writing it (`idata.to_netcdf`, the CLI's
`--out`) streams it to disk block by block, so a predictive of any size never is
in memory whole; reading it twice simulates it twice, to the same values.
"""

from __future__ import annotations

import functools
import threading
from contextlib import closing
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sbi_plugins.contract import Simulator
from sbi_plugins.data import PreparedData, decision_columns
from sbi_plugins.errors import SbiPluginsError
from sbi_plugins.likelihoods.lapse import Lapse, apply_to_simulations
from sbi_plugins.parallel import forked_map, local_workers

DISCRETE_KINDS = ("count", "choice")
"""Observable kinds stored as integers (`az.plot_ppc` draws them as bars)."""

ROWS_PER_BATCH = 200_000
"""Draw x row evaluations per batch when scoring or simulating after sampling."""
PREDICTIVE_ROWS = 2_000_000
"""At most this many simulated rows in the posterior predictive, unless asked; a
larger one asked for is simulated lazily, batch by batch, as it is read."""
PROCESSES_FROM = 4
"""Batches from which the simulations go to local processes: below that, starting a
pool costs more than it saves."""


def draw_batches(num_draws: int, num_rows: int) -> list[slice]:
    size = max(1, ROWS_PER_BATCH // max(num_rows, 1))
    return [slice(i, i + size) for i in range(0, num_draws, size)]


def chain_batches(chains: int, draws: int, num_rows: int) -> list[slice]:
    """`draw_batches` of the flattened (chain, draw) index that never straddle two
    chains, so that each is one block of a `(chain, draw, row)` array."""
    return [
        slice(chain * draws + b.start, chain * draws + min(b.stop, draws))
        for chain in range(chains)
        for b in draw_batches(draws, num_rows)
    ]


def predictive_draws(
    request: bool | int,
    shape: tuple[int, int],
    num_rows: int,
    budget: int | None = None,
) -> np.ndarray:
    """Which draws (the same in every chain) get a simulated data set: with
    `request` True, every draw while chains x draws x rows stays within `budget`,
    else as many draws per chain as fit in it, evenly spaced; an int asks for that
    many per chain; False for none. `budget` defaults to `PREDICTIVE_ROWS`; the
    pointwise log-likelihood is thinned by the same rule, with a budget of its own."""
    chains, draws = shape
    budget = PREDICTIVE_ROWS if budget is None else budget
    if request is False:
        return np.arange(0)
    if request is True:
        wanted = min(draws, max(1, budget // max(1, chains * num_rows)))
    else:
        wanted = max(1, min(int(request), draws))
    return np.unique(np.linspace(0, draws - 1, wanted).round().astype(int))


def simulate_predictive(
    simulator: Simulator,
    theta: np.ndarray,
    data: PreparedData,
    seed: int,
    selected: np.ndarray,
    *,
    workers: int | None = None,
    progress: bool = False,
    label: str = "posterior predictive",
    lapse: Lapse | None = None,
    share: np.ndarray | None = None,
) -> dict[str, np.ndarray] | None:
    """One simulated row per selected draw and data row, `theta` of shape `(chain,
    draw, group, parameter)`; returns each observable as `(chain, draw, row)`.
    `workers`: local processes (default one per core). With lapses, each row is a
    lapse row with its draw's `share` (`(chain, draw)`) as probability. Where the
    data have deadlines (`data.deadline`), a simulated trial not decided by its
    row's deadline is an omission: NaN in every observable, as in the data.
    Beyond `PREDICTIVE_ROWS` rows in all, dask arrays simulated when read."""
    if not len(selected):
        return None
    theta = theta[:, selected]
    chains, draws = theta.shape[:2]
    flat = theta.reshape(chains * draws, *theta.shape[2:])
    batches = chain_batches(chains, draws, len(data.x))
    lapses = None
    if lapse is not None:
        lapses = (lapse.distribution, share[:, selected].reshape(-1))
    job = (simulator, flat, data.group_index, seed, lapses, data.deadline)
    if len(flat) * len(data.x) > PREDICTIVE_ROWS:
        return lazy_predictive(job, batches, draws, data.deadline is not None)
    n = (
        1
        if len(batches) < PROCESSES_FROM
        else local_workers(workers or None, len(batches))
    )
    out = np.empty((len(flat), len(data.x), len(simulator.observables)))
    with tqdm(
        total=len(flat) * len(data.x),
        desc=label,
        unit="row",
        disable=not progress,
    ) as bar:
        tasks = list(enumerate(batches))
        simulate = functools.partial(simulate_batch, job)
        with closing(forked_map(simulate, tasks, n)) as done:
            for position, result in done:
                out[batches[position]] = result
                bar.update(result.shape[0] * len(data.x))
    out = out.reshape(chains, draws, len(data.x), -1)
    return {name: out[..., j] for j, name in enumerate(simulator.observable_names)}


def lazy_predictive(
    job: tuple, batches: list[slice], draws: int, omissions: bool
) -> dict[str, Any]:
    """Each observable as a `(chain, draw, row)` dask array whose blocks are
    `simulate_batch(job, index, batch)`, simulated when read. Counts and choices
    are int64 (as `observable_dtypes` makes them in memory) unless the data have
    omissions (NaN)."""
    import dask
    import dask.array as da

    simulator, rows = job[0], len(job[2])
    blocks = [dask.delayed(one_at_a_time)(job, i, b) for i, b in enumerate(batches)]
    out = {}
    for j, observable in enumerate(simulator.observables):
        dtype = (
            np.dtype(np.int64)
            if observable.kind in DISCRETE_KINDS and not omissions
            else np.dtype(np.float64)
        )
        chains: list[list] = [[] for _ in range(batches[-1].stop // draws)]
        for block, batch in zip(blocks, batches, strict=True):
            column = dask.delayed(observable_column)(block, j, observable.name, dtype)
            shape = (batch.stop - batch.start, rows)
            chains[batch.start // draws].append(
                da.from_delayed(column, shape=shape, dtype=dtype)
            )
        out[observable.name] = da.stack([da.concatenate(c) for c in chains])
    return out


SIMULATING = threading.Lock()
"""Simulators need not be thread-safe (ssm-simulators' compiled DDM keeps one
random state per process), and dask reads blocks in threads: one at a time."""


def one_at_a_time(job: tuple, index: int, batch: slice) -> np.ndarray:
    with SIMULATING:
        return simulate_batch(job, index, batch)


def observable_column(
    sims: np.ndarray, j: int, name: str, dtype: np.dtype
) -> np.ndarray:
    """Column `j` of a batch of simulations in `dtype`; a count or choice that is
    not a whole number cannot be stored as one, and says so."""
    column = sims[..., j]
    if dtype.kind == "i":
        if not (np.isfinite(column).all() and (column == np.round(column)).all()):
            raise SbiPluginsError(
                f"the simulator returned {name} values that are not whole numbers "
                "(NaN: failed simulations?) in a predictive too large to hold in "
                "memory; ask for fewer draws (posterior_predictive=N)"
            )
        return column.astype(dtype)
    return column


def simulate_batch(job: tuple, index: int, batch: slice) -> np.ndarray:
    """Batch `index` of draws: every data row simulated at its group's parameters,
    `(draws, rows, observables)`, from the batch's own generator; lapse rows (where
    the model has lapses) from a second one, so the model's rows stay the same.
    Trials past their row's deadline (where there is one) become omissions, before
    lapses replace rows: a lapse is a response, never an omission."""
    simulator, flat, group_index, seed, lapses, deadline = job
    rows = flat[batch][:, group_index, :]
    rng = np.random.default_rng([seed, 1, index])
    sims = np.asarray(simulator.simulate(rows.reshape(-1, rows.shape[-1]), rng))
    sims = sims.reshape(rows.shape[0], len(group_index), -1)
    if deadline is not None:
        sims = censor(simulator, sims, deadline)
    if lapses is not None:
        distribution, share = lapses
        rng = np.random.default_rng([seed, 2, index])
        sims = apply_to_simulations(sims, share[batch], distribution, rng)
    return sims


def censor(simulator: Simulator, sims: np.ndarray, deadline: np.ndarray) -> np.ndarray:
    """Simulated rows `(..., rows, observables)` whose response time is at or past
    the row's deadline (or never came: NaN) become omissions, NaN throughout."""
    time_column, _ = decision_columns(simulator)
    late = ~(sims[..., time_column] < deadline)
    sims = sims.copy()
    sims[late] = np.nan
    return sims
