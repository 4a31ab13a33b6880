"""The plugin tutorial, followed as a reader would: the package is written from the
page's code blocks alone, pip-installed into a throwaway target, and every shell
step of the page runs against it through its entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from sbi_plugins import EstimatorArtifact, hookimpl
from sbi_plugins.cli import main
from tests.conftest import REPO

PAGE = REPO / "docs" / "writing-a-plugin.md"
EXAMPLE = REPO / "examples" / "sbi-plugins-signal"
BIN = Path(sys.executable).parent
FILE_LINE = re.compile(r"# (sbi-plugins-signal/\S+)\n")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def tutorial_files() -> dict[str, str]:
    """The files the page shows, keyed by the path on their first line."""
    files = {}
    for block in code_blocks("toml") + code_blocks("python"):
        first = FILE_LINE.match(block)
        if first:
            files[first.group(1)] = block
    return files


def test_the_example_package_is_the_tutorial_verbatim():
    files = tutorial_files()
    assert set(files) == {
        "sbi-plugins-signal/pyproject.toml",
        "sbi-plugins-signal/sbi_plugins_signal/__init__.py",
        "sbi-plugins-signal/train_estimator.py",
    }
    for name, text in files.items():
        path = EXAMPLE / name.removeprefix("sbi-plugins-signal/")
        assert path.read_text() == text, f"{path} differs from {PAGE.name}"


def test_the_shipped_example_estimator_has_the_recorded_checksum():
    from sbi_plugins.estimators.format import read_payload

    source = (EXAMPLE / "sbi_plugins_signal" / "__init__.py").read_text()
    recorded = re.search(r'ESTIMATOR_SHA256 = "([0-9a-f]{64})"', source).group(1)
    _, actual = read_payload(EXAMPLE / "sbi_plugins_signal" / "signal-nsf.pt")
    assert actual == recorded


@pytest.fixture
def signal_module(monkeypatch):
    """The example plugin's module, imported from its source folder."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import sbi_plugins_signal

    yield sbi_plugins_signal
    sys.modules.pop("sbi_plugins_signal", None)


class ShipsAnEstimator:
    """A plugin registering the signal simulator and, given, an estimator file."""

    def __init__(self, simulator, path=None, sha256=None):
        self.simulator, self.path, self.sha256 = simulator, path, sha256

    @hookimpl
    def register_simulators(self, register):
        register(self.simulator)

    @hookimpl
    def register_estimators(self, register):
        if self.path is not None:
            register(EstimatorArtifact(self.simulator.name, self.path, self.sha256))


def test_train_writes_an_artifact_that_a_plugin_ships(
    registry, signal_module, tmp_path, capsys
):
    from sbi_plugins.estimators import load, resolve_estimator

    signal = signal_module.SIGNAL
    with registry.plugin(ShipsAnEstimator(signal)):
        out = tmp_path / "signal-nsf.pt"
        argv = ["train", "signal", "--num-simulations", "2000", "--seed", "1"]
        code = main([*argv, "--out", str(out), "--no-progress"])
        printed = capsys.readouterr().out
    assert code == 0
    assert "trained signal estimator (nsf) on 2000 simulations" in printed
    assert f"wrote {out}" in printed
    sha256 = re.search(r"sha256 ([0-9a-f]{64})", printed).group(1)
    assert load(out, signal).metadata["parameters"] == [
        {"name": "mu", "lower": -2.0, "upper": 2.0},
        {"name": "sigma", "lower": 0.5, "upper": 2.0},
    ]

    with registry.plugin(ShipsAnEstimator(signal, out, sha256), name="shipper"):
        shipped = resolve_estimator(signal, progress=False)
        assert shipped.source == str(out) and shipped.checksum == sha256
        assert main(["list"]) == 0
        listing = capsys.readouterr().out
    assert "shipper (local) [ok]" in listing
    assert "estimators: signal:default" in listing

    with registry.plugin(ShipsAnEstimator(signal, out, "f" * 64), name="wrong-sum"):
        with pytest.warns(UserWarning, match="'wrong-sum'.*checksum check failed"):
            assert main(["list"]) == 0
        listing = capsys.readouterr().out
        assert registry.estimator_artifacts("signal") == []
    assert "wrong-sum (local) [FAILED]" in listing
    assert "refused estimator file for signal:default" in listing
    assert "differs from the ffffffffffff... its plugin registered" in listing


# -- the whole tutorial, through the entry point ------------------------------------

SHIMS = r"""
pip() {  # the tutorial's install, into a throwaway target, not the environment
    [ "$1" = install ] || { echo "unexpected pip $*" >&2; return 1; }
    shift
    python -m pip install -q --no-deps --no-build-isolation --upgrade \
        --target "$SITE" "$@"
}
sbi-plugins() {  # quick sampler settings, as tests/test_docs.py uses for Python
    local sub=$1
    shift
    case $sub in
        fit) command sbi-plugins fit "$@" --draws 50 --tune 50 --chains 1 \
            --no-progress ;;
        check) command sbi-plugins check "$@" --sbc-datasets 8 --sbc-trials 8 \
            --sbc-tune 60 --sbc-draws 40 --sbc-thin 1 --no-progress ;;
        *) command sbi-plugins "$sub" "$@" ;;
    esac
}
"""


@pytest.mark.slow
def test_a_plugin_made_only_from_the_tutorial_installs_checks_and_fits(tmp_path):
    work, site = tmp_path / "work", tmp_path / "site"
    for name, text in tutorial_files().items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        "SITE": str(site),
        "SBI_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
        # tiny networks: one thread each, so a busy machine does not thrash
        "OMP_NUM_THREADS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    outputs, seconds = [], []
    for block in code_blocks("bash"):
        started = time.perf_counter()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", SHIMS + block],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds.append(round(time.perf_counter() - started, 1))
        assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    train, install, fits = outputs
    print("seconds per shell block:", seconds)

    package = work / "sbi-plugins-signal" / "sbi_plugins_signal"
    sha256 = re.search(r"sha256 ([0-9a-f]{64})", train).group(1)
    assert f'ESTIMATOR_SHA256 = "{sha256}"' in (package / "__init__.py").read_text()
    assert (site / "sbi_plugins_signal" / "signal-nsf.pt").is_file()

    assert "signal (sbi-plugins-signal 0.1.0) [ok]" in install
    assert "simulators: signal" in install and "estimators: signal:default" in install
    for check in (
        "shape and dtype",
        "determinism",
        "exact likelihood",
        "metadata",
        "held-out log-likelihood",
        "error vs exact",
        "mu",
        "sigma",
    ):
        assert re.search(rf"PASS  {check}: ", install), check
    assert re.search(r"all 13 checks passed \(\d+ warnings, 0 skipped\)", install)

    assert "elpd_loo" in fits
    assert all(name in fits for name in ("pooled", "unpooled", "hierarchical"))
    sys.path.insert(0, str(site))
    try:
        from sbi_plugins_signal import SITES
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("sbi_plugins_signal", None)
    pooled = az.from_netcdf(work / "pooled.nc")
    assert pooled.posterior["mu"].dims == ("chain", "draw")
    for name, pooling in (("unpooled", "none"), ("hierarchical", "partial")):
        idata = az.from_netcdf(work / f"{name}.nc")
        assert idata.attrs["estimator_checksum"] == sha256, "the shipped estimator"
        assert f'"mu": "{pooling}"' in idata.attrs["pooling"]
        mu = idata.posterior["mu"]
        assert list(mu["site"].values) == list(SITES)
        truth = np.array([SITES[s][0] for s in SITES])
        mean, sd = mu.mean(("chain", "draw")).values, mu.std(("chain", "draw")).values
        assert (np.abs(mean - truth) < 4 * sd + 0.05).all(), (mean, truth, sd)
    hierarchical = az.from_netcdf(work / "hierarchical.nc")
    assert {"mu_mu", "mu_sigma", "sigma_mu", "sigma_sigma"} <= set(
        hierarchical.posterior.data_vars
    )
