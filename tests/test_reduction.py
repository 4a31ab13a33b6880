"""Declared symmetries: the DDM's are exact, and a network trained with them sees
only the declared parameter products and the shifted, scaled value."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import sbi_plugins
from sbi_plugins.contract import Observable
from sbi_plugins.errors import ContractError
from sbi_plugins.likelihoods.distribution import Likelihood


@pytest.fixture(scope="module")
def ddm():
    return sbi_plugins.get_simulator("ddm")


def _train_tiny(simulator, **overrides):
    """A tiny estimator and the warnings its training gave."""
    import warnings

    from sbi_plugins.estimators.training import train

    settings = dict(
        num_simulations=3000,
        hidden_features=16,
        num_transforms=1,
        max_num_epochs=2,
        seed=1,
        progress=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = train(simulator, **{**settings, **overrides})
    return estimator, caught


@pytest.fixture(scope="module")
def reduced_tiny_training(ddm):
    return _train_tiny(ddm, options={"log_transform_x": True, "log_theta": "auto"})


@pytest.fixture(scope="module")
def reduced_tiny(reduced_tiny_training):
    return reduced_tiny_training[0]


def _random_points(ddm, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    low = torch.tensor(ddm.lower, dtype=torch.float64)
    high = torch.tensor(ddm.upper, dtype=torch.float64)
    theta = low + (high - low) * torch.rand(n, 4, generator=gen, dtype=torch.float64)
    rt = theta[:, 3] + 0.02 + 3 * torch.rand(n, generator=gen, dtype=torch.float64)
    response = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return theta, torch.stack([rt, response.double()], -1)


def _canonical(theta: torch.Tensor, x: torch.Tensor):
    """The same data at boundary 1 and no non-decision time: (v a, 1, z, 0) and
    (rt - t) / a**2."""
    v, a, z, t = theta.unbind(-1)
    one, zero = torch.ones_like(a), torch.zeros_like(t)
    canonical = torch.stack([v * a, one, z, zero], -1)
    scaled = torch.stack([(x[:, 0] - t) / a**2, x[:, 1]], -1)
    return canonical, scaled, -2 * a.log()


def _assert_scaling_law(ddm, log_prob, seed: int, tolerance: float) -> None:
    theta, x = _random_points(ddm, 300, seed)
    canonical, scaled, log_jacobian = _canonical(theta, x)
    with torch.no_grad():
        torch.testing.assert_close(
            log_prob(theta, x),
            log_prob(canonical, scaled) + log_jacobian,
            rtol=tolerance,
            atol=tolerance,
        )


def test_ddm_scaling_law_holds_for_the_exact_density(ddm):
    """What the plugin declares (shift t, scale a**2, condition v a and z) is the
    Navarro-Fuss scaling law: the exact density agrees to rounding."""
    _assert_scaling_law(ddm, ddm.log_likelihood, seed=0, tolerance=1e-10)


def test_reduced_network_sees_only_the_declared_products(ddm, reduced_tiny):
    network = reduced_tiny.metadata["network"]
    assert network["condition"] == [[[0, 1.0], [1, 1.0]], [[2, 1.0]]]
    assert network["scale"] == [[0, [[1, 2.0]]]] and network["shift"] == [[0, 3]]
    assert network["log_theta"] == [False, True]  # v a can be negative, z cannot
    _assert_scaling_law(ddm, Likelihood(ddm, reduced_tiny).log_prob, 1, 1e-4)


def _assert_grouped_as_by_row(simulator, estimator, seed: int) -> None:
    """Scoring per group (the fast path) gives each row's value and gradient."""
    lik = Likelihood(simulator, estimator)
    assert lik._grouped is not None
    rng = np.random.default_rng(seed)
    size = (2, 5, len(simulator.parameters))
    theta = torch.tensor(
        rng.uniform(simulator.lower, simulator.upper, size=size), requires_grad=True
    )
    index = torch.tensor(rng.integers(0, 5, size=80))
    x = torch.tensor(simulator.simulate(theta[0, index].detach().numpy(), rng))
    grouped = lik.log_prob_grouped(theta, index, x)
    by_row = lik.log_prob(theta[:, index, :], x)
    finite = torch.isfinite(by_row)
    assert finite.sum() > 100 and torch.equal(torch.isfinite(grouped), finite)
    torch.testing.assert_close(grouped[finite], by_row[finite], rtol=1e-4, atol=1e-4)
    (g_fast,) = torch.autograd.grad(grouped[finite].sum(), theta)
    (g_row,) = torch.autograd.grad(by_row[finite].sum(), theta)
    torch.testing.assert_close(g_fast, g_row, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(g_fast).all()


def test_reduced_network_scores_per_group_as_row_by_row(ddm, reduced_tiny):
    _assert_grouped_as_by_row(ddm, reduced_tiny, seed=4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"network_condition": ({"v": 1, "b": 1},)}, "network_condition"),
        ({"network_condition": ({"v": 0},)}, "non-zero powers"),
        ({"scale": {"t": 1}}, "lower bound is not positive"),
        ({"scale": {"b": 2}}, "scaled by 'b'"),
    ],
)
def test_bad_symmetry_declarations_fail_at_registration(ddm, change, message):
    rt = ddm.observables[0]
    if "scale" in change:
        observables = (dataclasses.replace(rt, **change), ddm.observables[1])
        change = {"observables": observables}
    with pytest.raises(ContractError, match=message):
        dataclasses.replace(ddm, **change)


def test_scale_needs_a_continuous_observable():
    with pytest.raises(ContractError, match="continuous"):
        Observable("k", "count", scale={"a": 1})
    assert math.isinf(Observable("rt", "continuous", 0.0, scale={"a": 2}).upper)


@pytest.fixture(scope="module")
def full_ddm_tiny():
    """A tiny `full_ddm` network: its `rt` exceeds the sum `t - st`."""
    pytest.importorskip("ssms.config")
    simulator = sbi_plugins.get_simulator("full_ddm")
    return simulator, _train_tiny(simulator)[0]


def _full_ddm_rows(simulator, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    low = torch.tensor(simulator.lower, dtype=torch.float64)
    high = torch.tensor(simulator.upper, dtype=torch.float64)
    theta = low + (high - low) * torch.rand(n, 7, generator=gen, dtype=torch.float64)
    earliest = theta[:, 3] - theta[:, 6]
    rt = earliest + 0.01 + 2 * torch.rand(n, generator=gen, dtype=torch.float64)
    response = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return theta, torch.stack([rt, response.double()], -1)


def test_a_sum_floor_is_learned_as_the_excess_over_it(full_ddm_tiny):
    """`full_ddm`'s onset varies over `t -+ st`: the network learns `rt - (t - st)`
    (scaled by a**2), so a row at or before `t - st` has probability zero and a row
    just after it a finite density (a network that saw `rt` itself gives both a
    density, its smoothed edge)."""
    from sbi_plugins.check.estimator import network_space

    simulator, estimator = full_ddm_tiny
    network = estimator.metadata["network"]
    assert network["shift"] == [[0, [[3, 1.0], [6, -1.0]]]]
    assert network_space(simulator, network) == "(rt - (t - st)) / a^2"
    lik = Likelihood(simulator, estimator)
    theta, x = _full_ddm_rows(simulator, 200, seed=2)
    earliest = theta[:, 3] - theta[:, 6]
    with torch.no_grad():
        assert torch.isfinite(lik.log_prob(theta, x)).all()
        before = torch.stack([earliest - 1e-4, x[:, 1]], -1)
        assert torch.isneginf(lik.log_prob(theta, before)).all()
        after = torch.stack([earliest + 1e-3, x[:, 1]], -1)
        assert torch.isfinite(lik.log_prob(theta, after)).all()


def test_a_sum_floor_scores_per_group_as_row_by_row(full_ddm_tiny):
    _assert_grouped_as_by_row(*full_ddm_tiny, seed=5)


def test_the_omission_onset_of_a_sum_floor_is_the_sum():
    """A deadline's omission probability integrates from the earliest RT on."""
    pytest.importorskip("ssms.config")
    from sbi_plugins.likelihoods.omission import time_frame

    simulator = sbi_plugins.get_simulator("full_ddm")
    theta, _ = _full_ddm_rows(simulator, 5, seed=3)
    onset, log_scale = time_frame(simulator, theta, 0)
    torch.testing.assert_close(onset, theta[:, 3] - theta[:, 6])
    torch.testing.assert_close(log_scale, 2 * theta[:, 1].log())


def test_training_on_log_rt_does_not_warn_of_outliers_in_rt(reduced_tiny_training):
    """sbi looks for outliers in `rt` itself (slow trials, 10 IQR out) and advises
    `z_score_x='none'`; the network z-scores log `rt`, where they are not outliers.
    A user training a plugin's estimator saw that advice, which is not theirs."""
    _, caught = reduced_tiny_training
    assert not [w for w in caught if "extreme outliers" in str(w.message)]
