"""The drift-diffusion simulator: ssm-simulators' compiled DDM, one trial per row.

Parametrization as ssm-simulators' `ddm` and HSSM: drift `v`, boundaries at -a and
+a (so `a` is half the separation), relative start `z`, non-decision time `t`,
noise sd 1. Response +1 is the upper boundary.

The simulator checks the boundaries once per time step, so its effective boundaries
sit beta * sqrt(dt) further out (beta = 0.5826; Broadie, Glasserman & Kou 1997):
about 0.018 at dt = 1 ms, a 6% error in `a` = 0.3. We simulate with boundaries moved
in by that amount, which makes the simulated trials follow the continuous DDM (and
its exact density) to within the time step.
"""

from __future__ import annotations

import math

import numpy as np

DELTA_T = 0.001
MAX_T = 30.0
BGK_BETA = 0.5826
_SHIFT = BGK_BETA * math.sqrt(DELTA_T)


def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`(n, 4)` rows of (v, a, z, t) -> `(n, 2)` rows of (rt, response).

    Trials still undecided after MAX_T seconds come back as NaN (training drops
    them; they are vanishingly rare inside the training domain).
    """
    import cssm

    theta = np.asarray(theta, dtype=np.float64)
    n = len(theta)
    if n == 0:
        return np.empty((0, 2))
    v, a, z, t = theta.T
    separation = 2.0 * (a - _SHIFT)
    start = (2.0 * a * z - _SHIFT) / separation
    out = cssm.ddm(
        v=v.astype(np.float32),
        a=separation.astype(np.float32),
        z=start.astype(np.float32),
        t=t.astype(np.float32),
        deadline=np.full(n, 999.0, dtype=np.float32),
        s=np.ones(n, dtype=np.float32),
        delta_t=DELTA_T,
        max_t=MAX_T,
        n_samples=1,
        n_trials=n,
        random_state=int(rng.integers(1, 2**31 - 1)),
        return_option="full",
        smooth_unif=True,
    )
    rt = out["rts"].reshape(n).astype(np.float64)
    response = out["choices"].reshape(n).astype(np.float64)
    undecided = rt - t >= MAX_T - DELTA_T
    rt[undecided] = np.nan
    return np.stack([rt, response], axis=1)
