"""Shared fixtures: an isolated cache, isolated registries, tiny estimators, data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sbi_plugins.plugin.registry import isolated_registry

REPO = Path(__file__).resolve().parents[1]
SHARED_COOKIES = REPO.parent / "shared" / "data" / "cookies.dat"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/sbi-plugins."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SBI_PLUGINS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("SBI_PLUGINS_LOAD_PLUGINS", raising=False)
    mp.delenv("SBI_PLUGINS_STRICT", raising=False)
    yield
    mp.undo()


@pytest.fixture
def registry():
    """A registry with the built-in prior families only: installed plugins do not
    leak in, and whatever a test registers is gone after it."""
    with isolated_registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def cookie():
    from sbi_plugins import get_simulator

    return get_simulator("cookie")


@pytest.fixture(scope="session")
def cookie_data() -> pd.DataFrame:
    """The 150-cookie reference data (../shared when present, else the plugin's
    embedded copy, which a test checks is identical)."""
    if SHARED_COOKIES.exists():
        return pd.read_csv(SHARED_COOKIES, sep=r"\s+")
    from sbi_plugins_cookie import example_data

    return example_data()


@pytest.fixture(scope="session")
def tiny_cookie_estimator(cookie):
    """A deliberately small estimator: fast to train, good enough for plumbing."""
    from sbi_plugins.estimators import train

    return train(
        cookie,
        num_simulations=8000,
        seed=3,
        progress=False,
        hidden_features=24,
        max_num_epochs=6,
        training_batch_size=256,
    )


@pytest.fixture
def simulated_batches(monkeypatch) -> list[slice]:
    """The batches the posterior predictive simulates, in the order it does."""
    from sbi_plugins.results import predictive

    simulated: list[slice] = []
    simulate_batch = predictive.simulate_batch

    def spy(job, index, batch):
        simulated.append(batch)
        return simulate_batch(job, index, batch)

    monkeypatch.setattr(predictive, "simulate_batch", spy)
    return simulated
