"""Broken plugins, installed as real distributions, each fail alone: `list` shows
them with the reason, the other plugins still fit, and strict mode makes each
failure fatal. Estimator files never run code, and a bad one is refused in one line
naming the file and the failed check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

import sbi_plugins
from sbi_plugins.cli import main
from sbi_plugins.errors import PluginError
from sbi_plugins.plugin.registry import PluginLoadWarning, Registry, isolated_registry
from tests.conftest import REPO

COOKIE_FILE = REPO / "plugins/cookie/sbi_plugins_cookie/cookie-categorical.pt"

HEADER = """
    from pathlib import Path

    import numpy as np
    from sbi_plugins import EstimatorArtifact, hookimpl
    from sbi_plugins.contract import Observable, Parameter, Simulator

    def toy(name, simulate=None, **extra):
        return Simulator(
            name=name,
            parameters=(Parameter("rate", 0.1, 10.0),),
            observables=(Observable("count", "count"),),
            simulate=simulate or (lambda t, rng: rng.poisson(t).astype(float)),
            **extra,
        )
"""

PLUGINS = {
    "ep_ok": """
        @hookimpl
        def register_simulators(register):
            register(toy("okcount"))
    """,
    "ep_noimport": """
        import not_a_module_anywhere
    """,
    "ep_raises": """
        @hookimpl
        def register_simulators(register):
            raise RuntimeError("hook exploded")
    """,
    "ep_badshape": """
        @hookimpl
        def register_simulators(register):
            register(toy("badshape", lambda t, rng: np.zeros((len(t), 3))))
    """,
    "ep_badsum": """
        @hookimpl
        def register_simulators(register):
            register(toy("sumsim"))

        @hookimpl
        def register_estimators(register):
            path = Path(__file__).with_suffix(".pt")
            register(EstimatorArtifact("sumsim", path, "0" * 64))
    """,
    "ep_tampered": """
        @hookimpl
        def register_simulators(register):
            register(toy("tampersim"))

        @hookimpl
        def register_estimators(register):
            path = Path(__file__).with_suffix(".pt")
            register(EstimatorArtifact("tampersim", path, "{sha256}"))
    """,
    "ep_future": """
        @hookimpl
        def register_simulators(register):
            register(toy("futuresim", contract_version=99))
    """,
}

REASONS = {
    "ep_noimport": r"import failed: ModuleNotFoundError: No module named "
    r"'not_a_module_anywhere'",
    "ep_raises": r"register_simulators raised RuntimeError: hook exploded",
    "ep_badshape": r"simulator 'badshape': simulate returned shape \(8, 3\) for 8 "
    r"parameter rows; expected \(8, 1\)",
    "ep_badsum": r"refused estimator file for sumsim:default: .*ep_badsum\.pt: "
    r"checksum check failed: its SHA-256 \w+\.\.\. differs from the 000000000000\.\.\. "
    r"its plugin registered",
    "ep_tampered": r"refused estimator file for tampersim:default: .*ep_tampered\.pt: "
    r"checksum check failed: the content does not match the SHA-256 recorded",
    "ep_future": r"simulator 'futuresim' targets plugin contract version 99; this "
    r"sbi-plugins supports 1: upgrade one of the two",
}
BROKEN = sorted(REASONS)


def cookie_sha256() -> str:
    from sbi_plugins_cookie import ESTIMATOR_SHA256

    return ESTIMATOR_SHA256


def tamper(source: Path, target: Path) -> None:
    """Edit one weight and keep the checksum the file records."""
    payload = torch.load(source, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1e-3
    torch.save(payload, target)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Each plugin as an installed distribution: a module, a .dist-info with its
    entry point, and (for the estimator cases) a shipped file beside it."""
    root = tmp_path_factory.mktemp("site")
    for module, body in PLUGINS.items():
        source = textwrap.dedent(HEADER) + textwrap.dedent(
            body.replace("{sha256}", cookie_sha256())
        )
        (root / f"{module}.py").write_text(source)
        dist = module.replace("_", "-")
        info = root / f"{module}-0.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n"
        )
        (info / "entry_points.txt").write_text(f"[sbi_plugins]\n{module} = {module}\n")
    shutil.copy(COOKIE_FILE, root / "ep_badsum.pt")
    tamper(COOKIE_FILE, root / "ep_tampered.pt")
    return root


@pytest.fixture
def installed(site, monkeypatch):
    """The broken plugins, the good one and cookie, loaded from entry points."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SBI_PLUGINS_LOAD_PLUGINS", ",".join([*PLUGINS, "cookie"]))
    with isolated_registry(load_entry_points=True) as registry:
        yield registry
    for module in PLUGINS:
        sys.modules.pop(module, None)


def plugin_blocks(listing: str) -> dict[str, str]:
    """`sbi-plugins list` output, split into one text block per plugin."""
    blocks = re.split(r"\n(?=\S)", listing.strip())
    return {block.split(" ", 1)[0]: block for block in blocks}


def test_list_shows_every_broken_plugin_with_its_reason(installed, capsys):
    with pytest.warns(PluginLoadWarning) as caught:
        assert main(["list"]) == 0
    blocks = plugin_blocks(capsys.readouterr().out)
    for name in BROKEN:
        assert f"{name} ({name.replace('_', '-')} 0.3) [FAILED]" in blocks[name]
        assert re.search(rf"  error: {REASONS[name]}", blocks[name]), blocks[name]
        assert any(f"'{name}'" in str(w.message) for w in caught), name
    assert "[ok]" in blocks["ep_ok"] and "simulators: okcount" in blocks["ep_ok"]
    assert (
        "[ok]" in blocks["cookie"] and "estimators: cookie:default" in blocks["cookie"]
    )
    assert "estimators:" not in blocks["ep_badsum"], "a refused file is not listed"
    assert "simulators: sumsim" in blocks["ep_badsum"], "its simulator still works"


def test_list_json_marks_the_broken_ones(installed, capsys):
    import json

    with pytest.warns(PluginLoadWarning):
        assert main(["list", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert {n for n, e in entries.items() if not e["ok"]} == set(BROKEN)
    assert entries["ep_future"]["errors"][0].startswith(
        "simulator 'futuresim' targets plugin contract version 99"
    )


@pytest.mark.slow
def test_other_plugins_still_fit_beside_the_broken_ones(installed, cookie_data):
    with pytest.warns(PluginLoadWarning):
        names = installed.simulator_names()
        refused = [installed.estimator_artifacts(n) for n in ("sumsim", "tampersim")]
    assert {"cookie", "okcount", "sumsim", "tampersim"} <= set(names)
    assert not {"badshape", "futuresim"} & set(names)
    assert refused == [[], []]
    idata = sbi_plugins.fit(
        cookie_data.groupby("location").head(6),
        "cookie",
        group="location",
        draws=40,
        tune=40,
        chains=1,
        seed=0,
        progress=False,
        posterior_predictive=False,
    )
    assert idata.attrs["estimator_checksum"] == cookie_sha256(), "shipped, not trained"


@pytest.mark.parametrize("name", BROKEN)
def test_strict_mode_makes_each_failure_fatal(site, monkeypatch, capsys, name):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SBI_PLUGINS_LOAD_PLUGINS", name)
    monkeypatch.setenv("SBI_PLUGINS_STRICT", "1")
    with pytest.raises(PluginError, match=rf"'{name}' failed: {REASONS[name]}"):
        Registry().plugins()
    with isolated_registry(load_entry_points=True):
        assert main(["list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sbi-plugins: error: plugin '{name}'")
    assert err[0].endswith("(SBI_PLUGINS_STRICT is set)")
    sys.modules.pop(name, None)


def _cli(site: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """Each run has an empty cache folder, so ArviZ's once-a-day FutureWarning
    fires every time (as on a user's first run of the day) and must be silenced."""
    with tempfile.TemporaryDirectory() as cache:
        environment = {
            **os.environ,
            "PYTHONPATH": str(site),
            "SBI_PLUGINS_LOAD_PLUGINS": ",".join([*PLUGINS, "cookie"]),
            "XDG_CACHE_HOME": cache,
            **env,
        }
        return subprocess.run(
            [sys.executable, "-m", "sbi_plugins.cli", *argv],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_a_real_process_lists_them_and_strict_mode_exits_2(site):
    result = _cli(site, "list")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    blocks = plugin_blocks(result.stdout)
    assert all("[FAILED]" in blocks[name] for name in BROKEN)
    assert "[ok]" in blocks["ep_ok"] and "[ok]" in blocks["cookie"]
    assert "skipped plugin 'ep_noimport'" in result.stderr

    strict = _cli(site, "list", SBI_PLUGINS_STRICT="1")
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 2 and len(lines) == 1, strict.stderr
    assert re.match(r"sbi-plugins: error: plugin 'ep_\w+' failed: ", lines[0])


# -- estimator files: refused in one line, naming the file and the check -------------


@pytest.fixture
def cookie_csv(tmp_path, cookie_data) -> Path:
    path = tmp_path / "cookies.csv"
    cookie_data.groupby("location").head(6).to_csv(path, index=False)
    return path


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sbi_plugins_cli_pwned",))


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(COOKIE_FILE.read_bytes()[:5000])
    tampered = tmp_path / "tampered.pt"
    tamper(COOKIE_FILE, tampered)
    exploit = tmp_path / "exploit.pt"
    torch.save({"format": "sbi-plugins-estimator", "x": _Exploit()}, exploit)
    return {
        "truncated": (
            truncated,
            r"truncated\.pt: not a loadable estimator file "
            r"\(check failed: safe weights-only load",
        ),
        "tampered": (
            tampered,
            r"tampered\.pt: checksum check failed: the content "
            r"does not match",
        ),
        "exploit": (
            exploit,
            r"exploit\.pt: not a loadable estimator file "
            r"\(check failed: safe weights-only load",
        ),
    }


def test_fit_refuses_bad_estimator_files_in_one_line(capsys, tmp_path, cookie_csv):
    marker = Path("/tmp/sbi_plugins_cli_pwned")
    marker.unlink(missing_ok=True)
    for name, (path, pattern) in _bad_files(tmp_path).items():
        out = tmp_path / f"{name}.nc"
        argv = ["fit", "cookie", str(cookie_csv), "--group", "location"]
        code = main([*argv, "--estimator", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert re.search(rf"^sbi-plugins: error: .*{pattern}", lines[0]), lines[0]
        assert not out.exists()
    assert not marker.exists(), "unpickling ran code"


def test_a_real_process_refuses_a_tampered_file_without_traceback(
    site, tmp_path, cookie_csv
):
    path, pattern = _bad_files(tmp_path)["tampered"]
    result = _cli(
        site,
        "fit",
        "cookie",
        str(cookie_csv),
        "--group",
        "location",
        "--estimator",
        str(path),
        "--out",
        str(tmp_path / "fit.nc"),
        SBI_PLUGINS_LOAD_PLUGINS="cookie",
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]) and "Traceback" not in result.stderr
