"""Models with onset variability (`st`) start where every trial is possible: their
`rt` has no shift, so `t` is not bounded by the fastest RT while sampling
(`t + U(-st, st)` may precede it), but the start keeps `t` below each group's
fastest RT (`Observable.start_below`), as it does for a shift. The exact
`full_ddm` density is zero before `t - st`, so a start at the typical `t` fails
on fast data."""

from __future__ import annotations

import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.data import prepare_data
from sbi_plugins.inference.starts import chain_starts, log_density, start_problem
from sbi_plugins.likelihoods.distribution import Likelihood
from sbi_plugins.model.model import build_model, plan_model
from sbi_plugins.model.support import start_value, typical_value

pytest.importorskip("ssms.config")

from sbi_plugins_ssm import simulate_dataset

FAST = {"t": (0.42, 0.0), "st": (0.23, 0.0), "a": (0.6, 0.0), "v": (2.0, 0.0)}
"""Narrow boundaries, a strong drift and a wide onset range: RTs from 0.27 s, after
the smallest `t` (0.25) but before the typical `t` less the typical `st` (0.32)."""
POOLING = {"v": "partial", "a": "partial", "t": "partial"}


def _model(name: str, population: dict | None = None):
    """The model `fit` builds on 3 x 30 simulated trials, with the exact density."""
    simulator = sbi_plugins.get_simulator(name)
    trials, _ = simulate_dataset(name, 3, 30, seed=0, population=population)
    pooling = {p.name: POOLING.get(p.name, "complete") for p in simulator.parameters}
    prepared = prepare_data(trials, simulator, "participant_id")
    parameters = plan_model(simulator, trials, "participant_id", pooling)
    model, kwargs = build_model(parameters, prepared, Likelihood(simulator))
    fastest = trials.groupby("participant_id")["rt"].min().to_numpy()
    return model, kwargs, prepared, fastest


def _typical(name: str, parameter: str) -> float:
    simulator = sbi_plugins.get_simulator(name)
    p = simulator.parameter(parameter)
    return typical_value(p, simulator.population_priors.get(parameter))


def test_the_exact_full_ddm_starts_on_rts_before_its_typical_onset():
    model, kwargs, prepared, fastest = _model("full_ddm", FAST)
    # the data the old start failed on: RTs before the typical t less the typical st
    assert fastest.min() < _typical("full_ddm", "t") - _typical("full_ddm", "st")
    assert fastest.min() > sbi_plugins.get_simulator("full_ddm").parameter("t").lower
    start = model.start()
    assert (model.with_derived(start)["t"].numpy() < fastest).all()
    assert np.isfinite(log_density(model, kwargs, start))
    problem = start_problem(model, kwargs, prepared)
    for chain in chain_starts(model, kwargs, start, 2, 0, problem):
        assert np.isfinite(log_density(model, kwargs, chain))
    # sampling is not bounded by the fastest RT (a shift's is): t may exceed it
    assert "t" not in model.ceilings


def test_a_shifted_model_starts_where_it_did():
    """`ddm_sdv`'s `t` shifts `rt`: sampled and started below each subject's
    fastest RT, halfway from the box's lower bound, as before."""
    model, _, _, fastest = _model("ddm_sdv")
    t = sbi_plugins.get_simulator("ddm_sdv").parameter("t")
    np.testing.assert_array_equal(model.ceilings["t"].numpy(), fastest)
    np.testing.assert_array_equal(model.start_ceilings["t"], fastest)
    expected = [
        start_value(_typical("ddm_sdv", "t"), t.lower, t.upper, c) for c in fastest
    ]
    start = model.with_derived(model.start())
    np.testing.assert_allclose(start["t"].numpy(), expected)
