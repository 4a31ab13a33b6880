"""The posterior predictive in seeded batches: the same draws in processes as here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.results import predictive

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def ddm_setup(monkeypatch):
    """A small DDM data set and posterior-like draws, with batches small enough that
    the simulations go to processes."""
    monkeypatch.setattr(predictive, "ROWS_PER_BATCH", 400)
    sim = sbi_plugins.get_simulator("ddm")
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "rt": rng.uniform(0.5, 2.0, 60),
            "response": rng.choice([-1, 1], 60),
            "participant_id": np.repeat(["s1", "s2", "s3"], 20),
        }
    )
    prepared = prepare_data(data, sim, "participant_id")
    theta = np.empty((2, 50, 3, 4))
    theta[..., 0] = np.array([-1.0, 0.0, 1.5])  # v per subject
    theta[..., 1] = 1.0
    theta[..., 2] = 0.5
    theta[..., 3] = 0.3
    return sim, prepared, theta


def test_processes_give_the_same_draws_as_one_process(ddm_setup):
    sim, prepared, theta = ddm_setup
    selected = np.arange(50)
    assert len(predictive.draw_batches(100, 60)) >= predictive.PROCESSES_FROM
    here = predictive.simulate_predictive(sim, theta, prepared, 7, selected, workers=1)
    forked = predictive.simulate_predictive(
        sim, theta, prepared, 7, selected, workers=2
    )
    for name in ("rt", "response"):
        assert here[name].shape == (2, 50, 60)
        np.testing.assert_array_equal(here[name], forked[name])
    other = predictive.simulate_predictive(sim, theta, prepared, 8, selected, workers=2)
    assert not np.array_equal(here["rt"], other["rt"])
    # each batch draws from its own generator: no batch repeats another
    flat = here["rt"].reshape(100, 60)
    assert not np.array_equal(flat[:6], flat[6:12])


def test_each_row_is_simulated_at_its_groups_parameters(ddm_setup):
    """Drift -1, 0, 1.5 per subject: the share of upper responses falls, sits at
    one half, and rises (4 Monte Carlo sd)."""
    sim, prepared, theta = ddm_setup
    out = predictive.simulate_predictive(
        sim, theta, prepared, 3, np.arange(50), workers=2
    )
    upper = (out["response"] == 1).mean(axis=(0, 1))
    groups = prepared.group_index
    share = np.array([upper[groups == g].mean() for g in range(3)])
    n = 2 * 50 * 20
    assert share[0] < 0.3 and share[2] > 0.9
    assert abs(share[1] - 0.5) < 4 * np.sqrt(0.25 / n)


def test_a_predictive_too_large_to_hold_is_simulated_lazily_to_the_same_values(
    ddm_setup, monkeypatch, tmp_path, simulated_batches
):
    """Beyond PREDICTIVE_ROWS the predictive is dask arrays of the same seeded
    batches: the same values as held in memory, choices as integers, and written
    to netCDF one batch at a time."""
    import arviz as az

    sim, prepared, theta = ddm_setup
    selected = np.arange(50)
    held = predictive.simulate_predictive(sim, theta, prepared, 3, selected, workers=1)
    monkeypatch.setattr(predictive, "PREDICTIVE_ROWS", 2 * 50 * 60 - 1)
    simulated = simulated_batches
    simulated.clear()  # held's
    lazy = predictive.simulate_predictive(sim, theta, prepared, 3, selected)
    assert not simulated  # nothing simulated before it is read
    assert lazy["rt"].dtype == np.float64 and lazy["response"].dtype == np.int64
    np.testing.assert_array_equal(lazy["rt"].compute(), held["rt"])
    np.testing.assert_array_equal(lazy["response"].compute(), held["response"])
    assert len(simulated) == 2 * len(predictive.chain_batches(2, 50, 60))
    simulated.clear()
    path = tmp_path / "predictive.nc"
    az.from_dict(posterior_predictive=lazy).to_netcdf(str(path))
    batches = predictive.chain_batches(2, 50, 60)
    assert sorted(simulated, key=lambda b: b.start) == batches  # once each
    assert max(b.stop - b.start for b in simulated) * 60 <= predictive.ROWS_PER_BATCH
    back = az.from_netcdf(path).posterior_predictive
    np.testing.assert_array_equal(back["rt"].values, held["rt"])
    np.testing.assert_array_equal(back["response"].values, held["response"])
