"""The README's Python examples run as written (with quick sampler settings)."""

import re
import types

import pytest

import sbi_plugins
from tests.conftest import REPO


def python_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_usage_and_plugin_examples():
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "sbi_plugins.fit(" in blocks[0] and "@hookimpl" in blocks[1]


def test_usage_example_runs(monkeypatch, capsys):
    real_fit = sbi_plugins.fit

    def quick_fit(*args, **kwargs):
        return real_fit(
            *args,
            **{**kwargs, "draws": 100, "tune": 100, "chains": 2, "progress": False},
        )

    monkeypatch.setattr(sbi_plugins, "fit", quick_fit, raising=False)
    exec(python_blocks()[0], {})
    out = capsys.readouterr().out
    assert "elpd_loo" in out and "lam_mu" in out


@pytest.mark.slow
def test_plugin_example_registers_and_fits(registry, tmp_path):
    import numpy as np
    import pandas as pd

    module = types.ModuleType("sbi_plugins_coinflips")
    exec(python_blocks()[1], module.__dict__)
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {"heads": rng.binomial(10, 0.3, 40), "coin": np.repeat(["a", "b"], 20)}
    )
    with registry.plugin(module):
        sim = registry.simulator("coinflips")
        est = sbi_plugins.train(
            sim, num_simulations=3000, max_num_epochs=5, progress=False
        )
        idata = sbi_plugins.fit(
            data,
            "coinflips",
            group="coin",
            estimator=est,
            draws=100,
            tune=100,
            chains=2,
            seed=0,
            progress=False,
        )
    assert idata.posterior["p"].sizes["coin"] == 2
    assert (
        float(idata.posterior["p"].min()) >= 0.01
        and float(idata.posterior["p"].max()) <= 0.99
    )
