"""The command line: one-line errors with exit code 2, no traceback, nothing lost."""

import json
import re
import subprocess
import sys

import arviz as az
import numpy as np
import pandas as pd
import pytest

from sbi_plugins.cli import main, parse_pooling

QUICK = ["--draws", "40", "--tune", "40", "--chains", "2", "--no-progress"]


@pytest.fixture
def csv(tmp_path, cookie_data):
    path = tmp_path / "cookies.csv"
    cookie_data.groupby("location").head(8).to_csv(path, index=False)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, pattern):
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sbi-plugins: error: ")
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def test_list_shows_plugins_and_json(capsys):
    code, out, _ = run(capsys, "list")
    assert (
        code == 0
        and "cookie (sbi-plugins-cookie" in out
        and "simulators: cookie" in out
    )
    code, out, _ = run(capsys, "list", "--json")
    entries = {e["name"]: e for e in json.loads(out)}
    assert entries["cookie"]["simulators"] == ["cookie"] and entries["cookie"]["ok"]


def test_list_a_simulator_shows_its_parameters_bounds_and_columns(capsys):
    """What to write in `--pooling` and the data before the first fit: the ddm's
    parameters with their training boxes, its columns and response codes."""
    code, out, _ = run(capsys, "list", "ddm")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("ddm (version ")
    assert [line.split()[0] for line in lines[1:5]] == ["v", "a", "z", "t"]
    assert "[0.3, 2.5]" in lines[2]  # a's box
    assert "rt (continuous); response (choice -1, 1)" in out
    assert "estimator: shipped" in out
    code, out, _ = run(capsys, "list", "ddm", "--json")
    (entry,) = json.loads(out)
    assert entry["parameters"]["z"] == {"lower": 0.1, "upper": 0.9}
    assert_user_error(capsys, ["list", "dmm"], r"unknown simulator 'dmm'.*installed")


def test_parse_pooling():
    assert parse_pooling("partial") == "partial"
    assert parse_pooling("v=partial, a=complete") == {"v": "partial", "a": "complete"}


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda df: df.rename(columns={"chips": "n"}), r"'chips' missing"),
        (
            lambda df: df.assign(chips=df["chips"].astype(float).where(df.index != 3)),
            r"'chips'.*non-finite.*row 3.*\(rows count from 0 below the header",
        ),
        (
            lambda df: df.assign(chips=df["chips"].where(df.index != 5, -2)),
            r"negative or non-integer.*row 5",
        ),
        (
            lambda df: df.assign(
                chips=df["chips"].astype(float).where(df.index != 6, 2.5)
            ),
            r"non-integer.*row 6",
        ),
        (
            lambda df: df.assign(chips=df["chips"].where(df.index != 7, 900)),
            r"row 7 lie outside \[0, \d+\]",
        ),
    ],
)
def test_bad_data_is_named_and_nothing_is_written(capsys, tmp_path, csv, edit, pattern):
    bad = tmp_path / "bad.csv"
    edit(pd.read_csv(csv)).to_csv(bad, index=False)
    out = tmp_path / "fit.nc"
    assert_user_error(
        capsys,
        ["fit", "cookie", bad, "--group", "location", "--out", out, *QUICK],
        pattern,
    )
    assert not out.exists()


def test_unknown_simulator(capsys, tmp_path, csv):
    assert_user_error(
        capsys,
        ["fit", "biscuit", csv, "--out", tmp_path / "f.nc"],
        r"unknown simulator 'biscuit'; installed simulators: .*cookie",
    )


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--hierarchical"], r"no --hierarchical option: --group participant_id"),
        (["--include", "v"], r"no --include option: --formula 'v ~ 1 \+ C\(cond\)"),
        (["--loglik-kind=analytical"], r"no --loglik-kind option: --likelihood exact"),
        (["--model", "ddm"], r"the simulator is the first argument"),
    ],
)
def test_hssm_options_name_the_flag_to_give(capsys, tmp_path, csv, flags, said):
    """argparse's exit 2 and usage line, with the equivalent flag; nothing run."""
    with pytest.raises(SystemExit) as exited:
        main(["fit", "cookie", str(csv), "--out", str(tmp_path / "f.nc"), *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and re.search(said, err), err
    assert not (tmp_path / "f.nc").exists()
    with pytest.raises(SystemExit):
        main(["fit", "cookie", str(csv), "--out", str(tmp_path / "f.nc"), "--bogus"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --bogus")


def test_missing_group_column(capsys, tmp_path, csv):
    assert_user_error(
        capsys,
        ["fit", "cookie", csv, "--group", "site", "--out", tmp_path / "f.nc"],
        r"group column 'site' is not in the data",
    )


def test_unreadable_file(capsys, tmp_path):
    assert_user_error(
        capsys,
        ["fit", "cookie", tmp_path / "none.csv", "--out", tmp_path / "f.nc"],
        r"no such file",
    )


def test_existing_output_is_never_overwritten(capsys, tmp_path, csv):
    out = tmp_path / "fit.nc"
    out.write_text("precious")
    assert_user_error(
        capsys,
        ["fit", "cookie", csv, "--group", "location", "--out", out],
        r"exists.*nothing was overwritten",
    )
    assert out.read_text() == "precious"


def test_bad_pooling_spec(capsys, tmp_path, csv):
    assert_user_error(
        capsys,
        [
            "fit",
            "cookie",
            csv,
            "--group",
            "location",
            "--pooling",
            "lam=",
            "--out",
            tmp_path / "f.nc",
        ],
        r"cannot read pooling",
    )


def test_fit_then_compare(capsys, tmp_path, csv, monkeypatch):
    import sbi_plugins.cli

    # a fit longer than this says it is under way (30 s; here at once)
    monkeypatch.setattr(sbi_plugins.cli, "ANNOUNCE_AFTER", 0.0)
    a, b = tmp_path / "partial.nc", tmp_path / "complete.nc"
    code, out, err = run(
        capsys,
        "fit",
        "cookie",
        csv,
        "--group",
        "location",
        "--seed",
        "1",
        "--out",
        a,
        *QUICK,
    )
    assert code == 0 and a.exists() and "lam_mu" in out
    # without progress bars, a line says the fit is under way, and the end its time
    assert "fitting cookie to" in err and "2 chains x (40 + 40)" in err
    assert re.search(r"wrote .*partial\.nc \(\d+ s\)", out)
    code, _, _ = run(
        capsys,
        "fit",
        "cookie",
        csv,
        "--group",
        "location",
        "--pooling",
        "complete",
        "--seed",
        "1",
        "--out",
        b,
        *QUICK,
    )
    assert code == 0
    assert az.from_netcdf(a).posterior["lam"].sizes["location"] == 5
    code, out, _ = run(capsys, "compare", a, b)
    assert code == 0 and "elpd_loo" in out and "partial" in out and "complete" in out


def test_a_fit_without_log_likelihood_cannot_be_compared_and_a_bare_prior_flag(
    capsys, tmp_path, csv
):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    run(capsys, "fit", "cookie", csv, "--group", "location", "--out", a, *QUICK)
    code, _, _ = run(
        capsys,
        *("fit", "cookie", csv, "--group", "location", "--out", b, *QUICK),
        *("--log-likelihood", "none", "--prior-predictive"),
    )
    assert code == 0 and "log_likelihood" not in az.from_netcdf(b).groups()
    # the flag alone asks for prior_predictive=True's 500 draws
    assert az.from_netcdf(b).prior_predictive.sizes["draw"] == 500
    assert az.from_netcdf(a).log_likelihood["chips"].dtype == np.float32
    assert_user_error(capsys, ["compare", a, b], r"has no .*log_likelihood group")


def test_compare_refuses_other_data(capsys, tmp_path, csv):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    run(capsys, "fit", "cookie", csv, "--group", "location", "--out", a, *QUICK)
    other = tmp_path / "other.csv"
    pd.read_csv(csv).assign(chips=lambda d: d["chips"] + 1).to_csv(other, index=False)
    run(capsys, "fit", "cookie", other, "--group", "location", "--out", b, *QUICK)
    assert_user_error(capsys, ["compare", a, b], r"fitted to other data")


def test_a_real_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sbi_plugins.cli",
            "fit",
            "cookie",
            str(tmp_path / "x.csv"),
            "--out",
            str(tmp_path / "o.nc"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("sbi-plugins: error: cannot read data file")
    assert "Traceback" not in result.stderr


def test_demo_writes_three_fits_a_table_and_a_plot(capsys, tmp_path):
    out = tmp_path / "demo"
    code, text, _ = run(
        capsys,
        "demo",
        "--out",
        out,
        "--draws",
        "150",
        "--tune",
        "150",
        "--chains",
        "2",
        "--no-progress",
    )
    assert code == 0
    for name in (
        "pooled.nc",
        "unpooled.nc",
        "hierarchical.nc",
        "shrinkage.png",
        "comparison.csv",
        "report.html",
    ):
        assert (out / name).exists(), name
    report = (out / "report.html").read_text()
    # 8 as before, and each fit's predictive check by location: the pooled fit's
    # too (its group labels are kept), where its one rate misses location 2
    assert report.count('<img src="data:image/png;base64,') == 11
    for name in ("pooled", "unpooled", "hierarchical"):
        assert f"<figcaption>{name}: posterior predictive check by location<" in report
    assert (out / "shrinkage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert table.index[-1] == "pooled"
    assert "model comparison" in text and "lam_mu" in text
    before = (out / "pooled.nc").read_bytes()
    assert_user_error(capsys, ["demo", "--out", out], r"already holds pooled.nc")
    assert (out / "pooled.nc").read_bytes() == before


def test_negative_cores_are_refused_before_sampling(capsys, csv, tmp_path):
    out = tmp_path / "f.nc"
    assert_user_error(
        capsys,
        ["fit", "cookie", csv, "--group", "location", "--cores", "-1", "--out", out],
        r"cores must be at least 1 \(or left out for one per core\), got -1",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        ("fit.nc", b"\x89HDF\r\n\x1a\n" + bytes(64), r"netCDF file \(a saved fit\?\)"),
        ("empty.csv", b"", r"the file is empty"),
        ("dup.csv", b"chips,chips,location\n1,2,a\n", r"'chips' appear more than"),
        ("folder", None, r"it is a directory"),
    ],
)
def test_unreadable_tables_are_one_line(capsys, tmp_path, name, content, pattern):
    data = tmp_path / name
    if content is None:
        data.mkdir()
    else:
        data.write_bytes(content)
    out = tmp_path / "f.nc"
    assert_user_error(
        capsys,
        ["fit", "cookie", data, "--group", "location", "--out", out, *QUICK],
        rf"cannot read data file .*{pattern}",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("auto", "auto"), ("on", True), ("OFF", False), ("0", False), ("2", 2)],
)
def test_refine_reads_auto_on_off_and_rounds(text, expected):
    from sbi_plugins.cli import parse_refine

    assert parse_refine(text) == expected


def test_a_bad_refine_is_one_line_and_writes_nothing(capsys, csv, tmp_path):
    out = tmp_path / "fit.nc"
    assert_user_error(
        capsys,
        [
            "fit",
            "cookie",
            csv,
            "--group",
            "location",
            "--refine",
            "always",
            "--out",
            out,
            *QUICK,
        ],
        r"cannot read --refine 'always': give auto .*, on, off or a number of rounds",
    )
    assert not out.exists()


def test_fit_refine_on_records_the_rounds(capsys, csv, tmp_path, monkeypatch):
    from sbi_plugins.estimators import refinement

    small = refinement.Refinement(simulations=5000, epochs=1)
    monkeypatch.setattr(refinement, "Refinement", lambda **kw: small)
    out = tmp_path / "fit.nc"
    code, _, _ = run(
        capsys,
        "fit",
        "cookie",
        csv,
        "--group",
        "location",
        "--refine",
        "on",
        "--out",
        out,
        *QUICK,
    )
    assert code == 0 and out.exists()
    record = json.loads(az.from_netcdf(out).posterior.attrs["refinement"])
    assert record["settings"]["simulations"] == 5000 and record["rounds"]


def test_fit_streams_a_large_predictive_and_thins_the_log_likelihood(
    capsys, tmp_path, csv, monkeypatch, simulated_batches
):
    """--posterior-predictive beyond what is held in memory is written to --out
    batch by batch; --log-likelihood-draws keeps that many draws per chain."""
    from sbi_plugins.results import predictive

    monkeypatch.setattr(predictive, "PREDICTIVE_ROWS", 1000)  # 2 x 40 x 40 rows
    simulated = simulated_batches
    out = tmp_path / "fit.nc"
    code, _, _ = run(
        capsys,
        *("fit", "cookie", csv, "--group", "location", "--out", out, *QUICK),
        *("--likelihood", "exact", "--seed", "2"),
        *("--posterior-predictive", "40", "--log-likelihood-draws", "10"),
    )
    assert code == 0
    idata = az.from_netcdf(out)
    chips = idata.posterior_predictive["chips"]
    assert chips.shape == (2, 40, 40) and chips.dtype == np.int64
    assert (chips.values >= 0).all()
    assert sorted(simulated, key=lambda b: b.start) == predictive.chain_batches(
        2, 40, 40
    )
    kept = idata.log_likelihood
    assert kept.sizes["draw"] == 10 and "10 of 40 draws" in kept.attrs["thinned"]
    assert kept["draw"].values[[0, -1]].tolist() == [0, 39]
    bad = ["fit", "cookie", csv, "--group", "location", "--out", tmp_path / "b.nc"]
    assert_user_error(
        capsys, [*bad, "--posterior-predictive", "-1"], r"--posterior-predictive"
    )
    assert_user_error(
        capsys, [*bad, "--log-likelihood-draws", "0"], r"log_likelihood_draws must"
    )


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--target-accept", "95"], r"target_accept must lie between 0 and 1.*0\.95\?"),
        (["--likelihood", "analytical"], r"HSSM's 'analytical' is 'exact'"),
        (["--pooling", "hierarchical"], r"'hierarchical' is 'partial' here"),
        (["--pooling", "lam:partial"], r"write name=mode pairs such as v=partial"),
        (["--pooling", "partal"], r"did you mean 'partial'\?"),
    ],
)
def test_a_tired_scientists_option_is_refused_with_what_to_write(
    capsys, tmp_path, csv, flags, said
):
    """Each refused in one line before any work, the output not written."""
    out = tmp_path / "f.nc"
    argv = ["fit", "cookie", csv, "--group", "location", "--out", out, *flags]
    assert_user_error(capsys, argv, said)
    assert not out.exists()


def test_the_data_given_before_the_simulator_is_named(capsys, tmp_path, csv):
    assert_user_error(
        capsys,
        ["fit", csv, "cookie", "--out", tmp_path / "f.nc"],
        r"unknown simulator .*cookies\.csv' \(a file: the data\? The simulator comes "
        r"first on the command line",
    )


@pytest.mark.parametrize(
    ("column", "values", "said"),
    [
        ("chips", ["many", "few"], r"found 'many', 'few'; 'chips' takes numbers"),
        ("chips", ["2,5", "3,0"], r"found '2,5', '3,0': decimal commas\?"),
    ],
)
def test_non_numeric_values_are_shown_with_the_likely_fix(
    capsys, tmp_path, cookie_data, column, values, said
):
    frame = cookie_data.head(10).astype({column: object})
    frame.loc[frame.index[:2], column] = values
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    assert_user_error(
        capsys,
        ["fit", "cookie", path, "--group", "location", "--out", tmp_path / "f.nc"],
        r"column .chips. has non-numeric values at rows 0, 1: " + said,
    )
