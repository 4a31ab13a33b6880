"""One ssm-simulators model as a `simulate(theta, rng)` function, one trial per row."""

from __future__ import annotations

import numpy as np

DELTA_T = 0.001
MAX_T = 20.0
"""ssm-simulators' defaults: a trial still undecided after MAX_T seconds comes back
as NaN (training drops it; inside the training boxes such trials are rare)."""


class SSMSimulate:
    """`(n, p)` parameter rows in the model config's order -> `(n, 2)` rows of
    (rt, response), response in the model's own codes (-1/1, or 0..K-1 for races).

    A class, not a closure, so that worker processes can pickle it."""

    def __init__(self, model: str, t_index: int | None) -> None:
        self.model = model
        self.t_index = t_index

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from ssms.basic_simulators.simulator import simulator

        theta = np.asarray(theta, dtype=np.float64)
        if len(theta) == 0:
            return np.empty((0, 2))
        seed = int(rng.integers(1, 2**31 - 1))
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
        onset = theta[:, self.t_index] if self.t_index is not None else 0.0
        undecided = (rt - onset >= MAX_T - DELTA_T) | (rt < 0)
        rt[undecided] = np.nan
        return np.stack([rt, response], axis=1)
