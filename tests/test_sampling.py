"""run_nuts on the fork pool: the same draws in processes as here, the caller's
global random states left as they were, progress bars that reach the end, and a
dead or failing chain named."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.welford import WelfordCovariance

from sbi_plugins.inference import nuts
from sbi_plugins.inference.flat import FLAT, FlatLayout
from sbi_plugins.inference.mass import DRAWS_PER_DIMENSION, WindowCovariance

pytestmark = pytest.mark.timeout(120)

TINY = {"draws": 30, "tune": 30, "chains": 2, "seed": 3, "jit": False}


def _tiny_model() -> None:
    pyro.sample("x", dist.Normal(0.0, 1.0))


def _run(**options):
    return nuts.run_nuts(_tiny_model, {}, **{"progress": False, **TINY, **options})


def _global_states() -> tuple:
    return (
        random.getstate(),
        np.random.get_state(legacy=False),
        torch.get_rng_state().clone(),
    )


def _same_states(a: tuple, b: tuple) -> bool:
    py, numpy_state, torch_state = a
    return (
        py == b[0]
        and numpy_state["bit_generator"] == b[1]["bit_generator"]
        and np.array_equal(numpy_state["state"]["key"], b[1]["state"]["key"])
        and numpy_state["state"]["pos"] == b[1]["state"]["pos"]
        and torch.equal(torch_state, b[2])
    )


@pytest.mark.parametrize("cores", [1, 2])
def test_sampling_leaves_the_callers_global_random_states_as_they_were(cores):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = _global_states()
    _run(cores=cores)
    assert _same_states(before, _global_states())
    # and the generators go on from where they were, not from a chain's seed
    assert random.random() == random.Random(123).random()


def test_same_draws_in_processes_as_here_and_other_seeds_differ():
    here = _run(cores=1)
    forked = _run(cores=2)
    other = _run(cores=1, seed=4)
    for a, b in zip(here, forked, strict=True):
        np.testing.assert_array_equal(a.samples["x"], b.samples["x"])
        assert a.stats.keys() == b.stats.keys()
        for name in a.stats:
            np.testing.assert_array_equal(a.stats[name], b.stats[name])
    assert not np.array_equal(here[0].samples["x"], here[1].samples["x"])
    assert not np.array_equal(here[0].samples["x"], other[0].samples["x"])


class _RecordingBar:
    """A stand-in for tqdm that keeps every update."""

    made: list[_RecordingBar] = []

    def __init__(self, total, **kwargs):
        self.total, self.n, self.updates, self.closed = total, 0, [], False
        _RecordingBar.made.append(self)

    def update(self, n):
        self.n += n
        self.updates.append(self.n)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("cores", [1, 2])
def test_each_chains_bar_follows_its_chain_to_the_end(monkeypatch, cores):
    monkeypatch.setattr(nuts, "tqdm", _RecordingBar)
    _RecordingBar.made = []
    chains = 3
    _run(cores=cores, chains=chains, draws=60, tune=40, progress=True)
    bars = _RecordingBar.made
    assert len(bars) == chains
    every = nuts.PROGRESS_EVERY
    for bar in bars:
        assert bar.closed and bar.n == bar.total == 100
        assert bar.updates == [*range(every, 100, every), 100]


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="forks")
def test_a_chain_whose_process_dies_is_named_with_the_cause(monkeypatch):
    def sample(job, chain, seed, report):
        if chain == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)  # chain 0: stopped, not waited for

    monkeypatch.setattr(nuts, "_sample_chain", sample)
    with pytest.raises(RuntimeError, match=r"chain 1 died: .*SIGKILL.*memory"):
        _run(cores=2)
    assert not [p for p in mp.active_children() if p.name == "sbi-plugins-worker"]


@pytest.mark.parametrize("cores", [1, 2])
def test_a_failing_chain_raises_its_own_error_naming_the_chain(monkeypatch, cores):
    def sample(job, chain, seed, report):
        if chain == 1:
            raise ValueError("no start")
        return nuts.ChainResult({}, {})

    monkeypatch.setattr(nuts, "_sample_chain", sample)
    with pytest.raises(ValueError, match="no start") as raised:
        _run(cores=cores)
    assert "(in chain 1)" in getattr(raised.value, "__notes__", ["(in chain 1)"])


def _stiff_model() -> None:
    """Scales a hundred-fold apart: with a unit mass matrix, every early
    transition runs trees of about a hundred steps."""
    pyro.sample("wide", dist.Normal(0.0, 1.0))
    pyro.sample("narrow", dist.Normal(0.0, 1e-2))


def _early_run(monkeypatch, max_dim: int) -> nuts.RecordingNUTS:
    """One chain of 40 + 5 on the stiff model, with `MAX_DIM` (the Laplace
    start's limit) at `max_dim`. Pyro's schedule for 40 warm-up steps: a start
    buffer of 6, then a first mass-matrix window to step 35."""
    from pyro.infer import MCMC

    from sbi_plugins.inference import laplace

    monkeypatch.setattr(laplace, "MAX_DIM", max_dim)
    pyro.set_rng_seed(0)
    kernel = nuts.RecordingNUTS(_stiff_model, jit_compile=False)
    MCMC(kernel, num_samples=5, warmup_steps=40, disable_progbar=True).run()
    return kernel


def test_a_model_too_large_for_the_laplace_start_caps_its_early_trees(monkeypatch):
    first_update = 36
    uncapped = [r["tree_depth"] for r in _early_run(monkeypatch, 1000).records]
    assert max(uncapped[:first_update]) > nuts.EARLY_TREE_DEPTH  # what the cap is for
    kernel = _early_run(monkeypatch, max_dim=1)  # 2 dimensions count as large
    capped = [r["tree_depth"] for r in kernel.records]
    assert len(capped) == 45
    assert max(capped[:first_update]) <= nuts.EARLY_TREE_DEPTH
    assert kernel._max_tree_depth == 10  # the full depth once the mass is adapted


def _correlated_model() -> None:
    """Two coordinates correlated 0.99, each of unit variance: a diagonal mass
    matrix cannot follow the ridge, a dense one makes it round."""
    pyro.sample(
        "xy",
        dist.MultivariateNormal(
            torch.zeros(2), torch.tensor([[1.0, 0.99], [0.99, 1.0]])
        ),
    )


def test_a_dense_mass_matrix_follows_a_correlated_posterior():
    def steps(dense: bool) -> float:
        (chain,) = nuts.run_nuts(
            _correlated_model,
            {},
            draws=200,
            tune=300,
            chains=1,
            seed=1,
            progress=False,
            jit=False,
            dense_mass=dense,
        )
        return float(chain.stats["n_steps"].mean())

    diagonal, dense = steps(False), steps(True)
    # a 0.99 ridge is 14 times longer than it is wide: diagonal trees span it
    # in many steps, dense ones in a few
    assert dense < diagonal / 2, (dense, diagonal)


def test_a_flat_layout_returns_each_site_with_its_shape_batches_included():
    values = {"b": torch.randn(3, 2), "a": torch.tensor(0.5), "c": torch.randn(4)}
    layout = FlatLayout.of(values)
    flat = layout.flatten(values)
    assert flat.shape == (11,)
    back = layout.unflatten(flat)
    assert all(torch.equal(back[k], v) for k, v in values.items())
    batch = torch.stack([flat, 2 * flat])  # draws of the vector, (draws, dims)
    sites = layout.unflatten(batch)
    assert sites["b"].shape == (2, 3, 2) and sites["a"].shape == (2,)
    assert torch.equal(sites["c"][1], 2 * values["c"])


def _three_site_model() -> None:
    pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    pyro.sample("loc", dist.Normal(torch.arange(3.0), 1.0).to_event(1))
    pyro.sample("weight", dist.Beta(2.0, 5.0))


def test_nuts_moves_one_flat_vector_and_returns_the_models_sites():
    chains = nuts.run_nuts(
        _three_site_model,
        {},
        draws=400,
        tune=300,
        chains=2,
        seed=5,
        progress=False,
        jit=False,
    )
    draws = {
        k: np.concatenate([c.samples[k] for c in chains]) for k in chains[0].samples
    }
    assert set(draws) == {"scale", "loc", "weight"}
    assert draws["loc"].shape == (800, 3) and draws["scale"].shape == (800,)
    # constrained site by site: positive, and inside (0, 1)
    assert (draws["scale"] > 0).all() and (
        (draws["weight"] > 0) & (draws["weight"] < 1)
    ).all()
    # each at its prior; 4 sd of the mean of 800 draws (ESS at least 200)
    assert abs(np.log(draws["scale"]).mean()) < 4 * 0.5 / np.sqrt(200)
    assert np.abs(draws["loc"].mean(0) - np.arange(3.0)).max() < 4 / np.sqrt(200)
    weight_sd = np.sqrt(2 * 5 / (7**2 * 8))
    assert abs(draws["weight"].mean() - 2 / 7) < 4 * weight_sd / np.sqrt(200)


def test_a_preset_inverse_mass_reaches_the_flat_vectors_adapter():
    preset = {
        "scale": torch.tensor(0.3),
        "loc": torch.tensor([1.0, 2.0, 3.0]),
        "weight": torch.tensor(0.7),
    }
    kernel = nuts.RecordingNUTS(
        _three_site_model, jit_compile=False, inverse_mass=preset
    )
    kernel.setup(warmup_steps=10)
    assert set(kernel.initial_params) == {FLAT}
    (inverse_mass,) = kernel.mass_matrix_adapter.inverse_mass_matrix.values()
    # sites in name order: loc, scale, weight
    assert torch.allclose(inverse_mass.float(), torch.tensor([1.0, 2.0, 3.0, 0.3, 0.7]))


def test_a_dense_window_too_short_for_its_dimensions_estimates_only_variances():
    """Stan's first windows (25, 50 draws) cannot estimate a dense matrix of a few
    dozen dimensions: below `DRAWS_PER_DIMENSION` draws per dimension the window
    gives its variances alone; above, the full (regularised) covariance, as Pyro's."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.5, 0.5, 0.7]])
    draws = torch.randn(200, 3, generator=generator, dtype=torch.float64)
    draws = draws @ mixing.double().T
    for count in (DRAWS_PER_DIMENSION * 3 - 1, 200):
        window, pyros = WindowCovariance(), WelfordCovariance(diagonal=False)
        for draw in draws[:count]:
            window.update(draw)
            pyros.update(draw)
        expected = pyros.get_covariance(regularize=True)
        got = window.get_covariance(regularize=True)
        if count < DRAWS_PER_DIMENSION * 3:
            assert torch.allclose(got, torch.diag(torch.diagonal(expected)))
            assert expected[1, 0] > 0.3  # what the short window leaves out
        else:
            assert torch.allclose(got, expected)


def test_nuts_with_a_dense_matrix_adapts_it_window_by_window():
    kernel = nuts.RecordingNUTS(_three_site_model, full_mass=True)
    kernel.setup(warmup_steps=100)
    schemes = list(kernel.mass_matrix_adapter._adapt_scheme.values())
    assert schemes and all(isinstance(s, WindowCovariance) for s in schemes)
