"""report.html: self-contained, with the tables and figures it promises; the CLI
refuses bad input in one line; a headless browser renders it without errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import warnings

import arviz as az
import numpy as np
import pytest

import sbi_plugins
from sbi_plugins.cli import main
from sbi_plugins.report import diagnostics, render_report, write_report

QUICK = {"draws": 100, "tune": 100, "chains": 2, "seed": 1, "progress": False}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def fit_files(tmp_path_factory, cookie_data):
    """Two quick fits of the cookies, saved as the CLI would read them."""
    folder = tmp_path_factory.mktemp("fits")
    paths = []
    for name, pooling in (("unpooled", "none"), ("hierarchical", "partial")):
        idata = sbi_plugins.fit(
            cookie_data, "cookie", group="location", pooling=pooling, **QUICK
        )
        idata.to_netcdf(str(folder / f"{name}.nc"))
        paths.append(folder / f"{name}.nc")
    return paths


@pytest.fixture(scope="module")
def report(fit_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", *map(str, fit_files), "--out", str(out)]) == 0
    return out / "report.html"


def images(text: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', text)


@pytest.mark.slow
def test_report_is_self_contained_with_tables_and_figures(report):
    text = report.read_text()
    sources = images(text)
    # forest, shrinkage (lam: none vs partial), and per fit: predictive, predictive
    # by location (5 groups: one row of panels each) and domain
    assert len(sources) == 8
    for name in ("unpooled", "hierarchical"):
        assert f"<figcaption>{name}: posterior predictive check by location<" in text
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing to fetch: no external scripts, styles, links or fonts
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", text)
    assert "<link" not in text and "@import" not in text
    for table in ("overview", "diagnostics", "comparison"):
        assert f'id="{table}"' in text or f"id='{table}'" in text, table
    comparison = text[text.index('id="comparison"') :].split("</table>")[0]
    assert "unpooled" in comparison and "hierarchical" in comparison
    assert text.count("Posterior summary") == 2
    assert "Shrinkage of lam: unpooled vs hierarchical" in text


@pytest.mark.slow
def test_diagnostics_are_the_fits_own_numbers(fit_files):
    idata = az.from_netcdf(fit_files[1])
    found = diagnostics(idata)
    rhat = az.rhat(idata)
    assert found["max_rhat"] == pytest.approx(
        max(float(rhat[v].max()) for v in rhat.data_vars), abs=1e-9
    )
    ess = az.ess(idata, method="bulk")
    assert found["min_ess_bulk"] == pytest.approx(
        min(float(ess[v].min()) for v in ess.data_vars), rel=1e-6
    )
    assert found["divergences"] == int(idata.sample_stats["diverging"].sum())
    assert found["draws"] == 200 and found["domain_warnings"] == []


@pytest.mark.slow
def test_domain_warnings_and_other_data_are_reported(fit_files, tmp_path):
    warned = az.from_netcdf(fit_files[1])
    message = "posterior draws of 'lam' pile up at the upper bound 40 <retrain>"
    for group in warned.groups():
        warned[group].attrs["domain_warnings"] = json.dumps([message])
    other = az.from_netcdf(fit_files[0])
    other.observed_data.attrs["data_fingerprint"] = "other data"
    text = render_report({"warned": warned, "other": other})
    # listed in full, escaped, and its count flagged in the diagnostics table
    assert "pile up at the upper bound 40 &lt;retrain&gt;" in text
    row = re.search(r"<tr><td class=\"text\">warned</td>.*?</tr>", text).group(0)
    assert row.endswith('<td class="bad">1</td><td>small data</td></tr>')
    assert "Not compared" in text and "fitted to other data" in text


def test_the_learned_likelihoods_verdict_and_refinement_are_reported(fit_files):
    from sbi_plugins.estimators.refinement import Refinement, estimator_check, record_of

    rounds = [
        {
            "round": r,
            "num_simulations": 1000,
            "simulation_seconds": 1.5,
            "training_seconds": 4.0,
            "fit_seconds": 30.0,
            "max_shift_sd": shift,
            "max_beyond_noise_sd": shift - 0.1,
            "worst": "lam[2]",
        }
        for r, shift in ((1, 0.61), (2, 0.47))
    ]
    record = record_of(Refinement(rounds=2), rounds)
    check = estimator_check(record, exact=False, num_rows=6000, estimator=None)
    refined = az.from_netcdf(fit_files[1])
    for group in refined.groups():
        refined[group].attrs["estimator_check"] = json.dumps(check)
        refined[group].attrs["refinement"] = json.dumps(record)
    text = render_report({"refined": refined})
    row = re.search(r"<tr><td class=\"text\">refined</td>.*?</tr>", text).group(0)
    assert row.endswith('<td class="bad">flagged</td></tr>')
    assert "moved the posterior 0.47 sd at most (lam[2]), 0.37 sd beyond" in text
    assert "(rounds: 0.61, 0.47 sd), above the tolerance of 0.2 sd" in text
    table = re.search(r'<table[^>]*class="[^"]*refinement.*?</table>', text, re.S)
    cells = re.findall(r"<td>([^<]*)</td>", table.group(0))
    assert cells[:8] == ["1", "1000", "1.5", "4.0", "30.0", "0.61", "0.51", "lam[2]"]
    assert "2000 simulations, 11.0 s of simulating and training, 60.0 s of" in text


@pytest.mark.slow
def test_an_existing_report_is_not_overwritten(report, fit_files, capsys):
    before = report.read_bytes()
    code = main(["report", str(fit_files[0]), "--out", str(report.parent)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("sbi-plugins: error: ") and "exists" in err
    assert report.read_bytes() == before
    with pytest.raises(sbi_plugins.SbiPluginsError, match="not a directory"):
        write_report([fit_files[0]], report)


@pytest.mark.slow
def test_a_condition_no_fit_has_is_a_one_line_error(fit_files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["report", *map(str, fit_files), "--out", str(out), "--by", "batch"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no column 'batch'" in err and "the group 'location'" in err
    assert not (out / "report.html").exists()
    assert (
        main(["report", str(fit_files[0]), "--out", str(out), "--by", "location"]) == 0
    )
    text = (out / "report.html").read_text()
    assert "<figcaption>unpooled: posterior predictive check by location<" in text


@pytest.mark.parametrize(
    "content,pattern",
    [(None, r"cannot read fit .*missing\.nc.*no such file"), (b"not netcdf", "not an")],
)
def test_bad_fit_files_are_one_line_errors(tmp_path, capsys, content, pattern):
    path = tmp_path / ("missing.nc" if content is None else "bad.nc")
    if content is not None:
        path.write_bytes(content)
    code = main(["report", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


def chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={cwd / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: install Debian's `chromium` package (.ci/run does)",
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", url, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    (body,) = re.findall(r"<body[^>]*>", dom.stdout)
    # the report's own script marks the page once every image has decoded
    assert 'data-rendered="ok"' in body, body
    assert 'data-images-total="8"' in body and 'data-images-decoded="8"' in body
    assert 'data-errors="0"' in body, body
    assert dom.stdout.count("<table") >= 5  # overview, diagnostics, comparison, 2x
    shot = tmp_path / "report.png"
    result = chromium(
        f"--screenshot={shot}", "--window-size=1200,3000", url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    # figures drawn: many distinct colours, not a blank or error page
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 500


def test_a_bare_fit_gets_notes_instead_of_missing_figures(tmp_path):
    """A posterior alone (one chain, no predictive, no plugin): the report says
    what it cannot draw, and why, instead of failing."""
    rng = np.random.default_rng(0)
    bare = az.from_dict(posterior={"w": rng.normal(size=(1, 50))})
    text = render_report({"bare": bare})
    assert len(images(text)) == 1  # the forest plot
    assert "not drawn (this fit has no posterior_predictive group" in text
    assert "not drawn (this fit records no simulator" in text
    assert "n/a (1 chain)" in text and "One fit: nothing to compare" in text


def test_formula_fits_are_told_apart_and_their_coefficients_compared():
    """Two formula fits of the same data: the Fits table shows each formula (not
    'v: formula' twice) and the forest compares the population coefficients
    they share, drift included."""
    from sbi_plugins_ddm import simulate_dataset

    from sbi_plugins.report import _forest_variables, _overview_table

    trials, _ = simulate_dataset(3, 20, seed=1)
    trials["cond"] = np.where(np.arange(len(trials)) % 2, "easy", "hard")
    common = dict(
        group="participant_id",
        pooling={"a": "complete", "z": "complete", "t": "complete"},
        likelihood="exact",
        draws=5,
        tune=5,
        chains=1,
        seed=1,
        progress=False,
        posterior_predictive=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {
            name: sbi_plugins.fit(trials, "ddm", formulas={"v": formula}, **common)
            for name, formula in (
                ("cond", "v ~ 1 + C(cond) + (1|participant_id)"),
                ("plain", "v ~ 1 + (1|participant_id)"),
            )
        }
    table = _overview_table(fits)
    assert "v ~ 1 + C(cond) + (1|participant_id)" in table
    assert "v ~ 1 + (1|participant_id)" in table and "v: formula" not in table
    assert _forest_variables(fits) == ["v_Intercept", "a", "z", "t"]
    assert _forest_variables({"cond": fits["cond"]})[:2] == ["v_Intercept", "v_C(cond)"]
