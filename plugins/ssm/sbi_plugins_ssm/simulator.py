"""One ssm-simulators model as a `simulate(theta, rng)` function, one trial per row."""

from __future__ import annotations

import numpy as np

DELTA_T = 0.001
MAX_T = 20.0
"""ssm-simulators' defaults: a trial still undecided after MAX_T seconds comes back
as NaN (training drops it; inside the training boxes such trials are rare)."""

NOISE_SHARED_BY_CALL = {"levy": "alpha", "levy_angle": "alpha"}
"""Models whose noise ssm-simulators (0.12, one thread) draws for all the rows of a
call from one row's parameter: `levy_flexbound` draws its alpha-stable increments in
batches of 20,001 with the alpha of the row that starts the batch (the first row,
then whichever row empties it), scaled by each row's own `delta_t**(1/alpha)`. With
alpha 1 and 2 interleaved, the alpha-2 rows' median decision time was 0.025 s
instead of 0.39 s. Such models are simulated in one call per distinct value."""


class SSMSimulate:
    """`(n, p)` parameter rows in the model config's order -> `(n, 2)` rows of
    (rt, response), response in the model's own codes (-1/1, or 0..K-1 for races).

    `split_index`: the column whose distinct values each get their own call
    (`NOISE_SHARED_BY_CALL`); rows sharing a value, as a data set's trials do, still
    run in one call.

    A class, not a closure, so that worker processes can pickle it."""

    def __init__(
        self, model: str, t_index: int | None, split_index: int | None = None
    ) -> None:
        self.model = model
        self.t_index = t_index
        self.split_index = split_index

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        if len(theta) == 0:
            return np.empty((0, 2))
        if self.split_index is None:
            out = self._simulate(theta, int(rng.integers(1, 2**31 - 1)))
        else:
            values, which = np.unique(theta[:, self.split_index], return_inverse=True)
            seeds = rng.integers(1, 2**31 - 1, size=len(values))
            out = np.empty((len(theta), 2))
            for i, seed in enumerate(seeds):
                rows = which == i
                out[rows] = self._simulate(theta[rows], int(seed))
        rt = out[:, 0]
        onset = theta[:, self.t_index] if self.t_index is not None else 0.0
        undecided = (rt - onset >= MAX_T - DELTA_T) | (rt < 0)
        rt[undecided] = np.nan
        return out

    def _simulate(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """(rt, response) per row. Rows that repeat one parameter vector (a
        subject's trials, in a data set or a posterior predictive) are simulated
        as that vector's `n_samples`: ssm-simulators evaluates a trial's boundary
        over its whole time grid (20,000 steps to `MAX_T`), in Python, once per
        vector, which made one sample per row 1.8 (`levy`) to 7.5 (`weibull`)
        times slower on a posterior predictive's rows
        (`benchmarks/repeated_rows.py`). Rows that never repeat (training) are
        one call, as before."""
        unique, inverse, counts = np.unique(
            theta, axis=0, return_inverse=True, return_counts=True
        )
        if len(unique) == len(theta):
            return self._call(theta, 1, seed)[0]
        inverse = inverse.reshape(-1)
        # each row's rank among the rows of its vector: which sample it takes
        order = np.argsort(inverse, kind="stable")
        rank = np.empty(len(theta), dtype=np.int64)
        rank[order] = np.arange(len(theta)) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        rng = np.random.default_rng(seed)
        out = np.empty((len(theta), 2))
        for count in np.unique(counts):  # one call per number of repeats
            vectors = np.flatnonzero(counts == count)
            column = np.full(len(unique), -1)
            column[vectors] = np.arange(len(vectors))
            sims = self._call(
                unique[vectors], int(count), int(rng.integers(1, 2**31 - 1))
            )
            rows = np.flatnonzero(counts[inverse] == count)
            out[rows] = sims[rank[rows], column[inverse[rows]]]
        return out

    def _call(self, theta: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        """One call of ssm-simulators: `(n_samples, rows, 2)` of (rt, response),
        as it returns them."""
        from ssms.basic_simulators.simulator import simulator

        # some models (ddm_sdv) draw their variabilities from numpy's global
        # generator, not from random_state: seed it too, and put it back after
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            out = simulator(
                theta=theta,
                model=self.model,
                n_samples=n_samples,
                delta_t=DELTA_T,
                max_t=MAX_T,
                random_state=seed,
            )
        finally:
            np.random.set_state(saved)
        shape = (n_samples, len(theta))
        rt = out["rts"].reshape(shape).astype(np.float64)
        response = out["choices"].reshape(shape).astype(np.float64)
        return np.stack([rt, response], axis=-1)
