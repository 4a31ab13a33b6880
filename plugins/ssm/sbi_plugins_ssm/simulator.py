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
        """One call of ssm-simulators: (rt, response) per row, as it returns them."""
        from ssms.basic_simulators.simulator import simulator

        # some models (ddm_sdv) draw their variabilities from numpy's global
        # generator, not from random_state: seed it too, and put it back after
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            out = simulator(
                theta=theta,
                model=self.model,
                n_samples=1,
                delta_t=DELTA_T,
                max_t=MAX_T,
                random_state=seed,
            )
        finally:
            np.random.set_state(saved)
        rt = out["rts"].reshape(len(theta)).astype(np.float64)
        response = out["choices"].reshape(len(theta)).astype(np.float64)
        return np.stack([rt, response], axis=1)
