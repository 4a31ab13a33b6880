"""Outputs are never lost or overwritten: checked before any work, written to a
unique temporary file, linked to a name that must still be free, and cleaned up on
SIGTERM and Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from sbi_plugins import outputs
from sbi_plugins.cli import main
from sbi_plugins.outputs import OutputError, check_new_file, write_new

NO_PROC = not Path("/proc/self").is_dir()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def tiny_idata() -> az.InferenceData:
    rng = np.random.default_rng(0)
    return az.from_dict(posterior={"lam": rng.normal(size=(1, 20))})


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("sbi-plugins: error: ")
    return lines[0]


# the helper


def test_write_new_writes_through_a_unique_hidden_temp_file(tmp_path):
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".fit.")
        assert tmp.suffix == ".nc"  # writers may choose the format from it
        tmp.write_text("result")

    assert write_new(tmp_path / "fit.nc", write) == tmp_path / "fit.nc"
    assert (tmp_path / "fit.nc").read_text() == "result"
    assert leftovers(tmp_path) == []


def test_a_file_that_appeared_meanwhile_is_kept_and_so_is_the_result(tmp_path):
    out = tmp_path / "fit.nc"

    def write(tmp: Path) -> None:
        out.write_text("the other run's")  # a second run finished first
        tmp.write_text("ours")

    with pytest.raises(OutputError, match=r"fit.nc appeared while this ran.*fit-1.nc"):
        write_new(out, write)
    assert out.read_text() == "the other run's"
    assert (tmp_path / "fit-1.nc").read_text() == "ours"
    assert leftovers(tmp_path) == []


def test_two_concurrent_writes_to_one_name_keep_both(tmp_path):
    out = tmp_path / "fit.nc"
    both_writing = threading.Barrier(2, timeout=10)
    errors, temps = [], []

    def run(text: str) -> None:
        def write(tmp: Path) -> None:
            temps.append(tmp)
            tmp.write_text(text)
            both_writing.wait()

        try:
            write_new(out, write)
        except OutputError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and "fit-1.nc" in errors[0]
    assert temps[0] != temps[1]
    assert {out.read_text(), (tmp_path / "fit-1.nc").read_text()} == {"a", "b"}
    assert leftovers(tmp_path) == []


def test_without_hard_links_the_name_is_still_never_replaced(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_new(tmp_path / "a.nc", lambda tmp: tmp.write_text("first"))
    assert (tmp_path / "a.nc").read_text() == "first"
    with pytest.raises(OutputError, match="a-1.nc"):
        write_new(tmp_path / "a.nc", lambda tmp: tmp.write_text("second"))
    assert (tmp_path / "a.nc").read_text() == "first"
    assert (tmp_path / "a-1.nc").read_text() == "second"
    assert leftovers(tmp_path) == []


def test_a_failing_writer_leaves_nothing(tmp_path):
    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_new(tmp_path / "fit.nc", write)
    assert list(tmp_path.iterdir()) == []


def test_missing_directories_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "fit.nc"
    check_new_file(out)
    assert not (tmp_path / "a").exists()  # the check itself creates nothing
    write_new(out, lambda tmp: tmp.write_text("x"))
    assert out.read_text() == "x"


def unwritable(tmp_path: Path) -> list[tuple[Path, str]]:
    """Outputs that fail even for root: a parent that is a file, a pseudo file
    system (chmod does not stop root)."""
    (tmp_path / "afile").write_text("")
    cases = [
        (tmp_path / "afile" / "fit.nc", "afile is not a directory"),
        (tmp_path / "afile" / "sub" / "fit.nc", "afile is not a directory"),
    ]
    if not NO_PROC:
        cases.append((Path("/proc/sbi-plugins-test/fit.nc"), "does not take new"))
    return cases


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    for path, pattern in unwritable(tmp_path):
        with pytest.raises(OutputError, match=pattern):
            check_new_file(path)


# the command line


@pytest.fixture
def fake_fit(monkeypatch):
    """`fit` without sampling: records its calls and runs `during` first."""
    calls: list = []
    during: list = []

    def fit(*args, **kwargs):
        calls.append(args)
        for action in during:
            action()
        return tiny_idata()

    monkeypatch.setattr("sbi_plugins.runner.fit", fit)
    return calls, during


def fit_argv(out: Path) -> list[str]:
    return ["fit", "cookie", "data.csv", "--out", str(out), "--no-progress"]


def test_fit_never_overwrites_an_out_that_appeared_during_the_fit(
    capsys, tmp_path, fake_fit
):
    out = tmp_path / "fit.nc"
    _, during = fake_fit
    during.append(lambda: out.write_text("precious"))
    assert main(fit_argv(out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(r"fit.nc appeared while this ran.*written to .*fit-1.nc", line)
    assert out.read_text() == "precious"
    assert "lam" in az.from_netcdf(tmp_path / "fit-1.nc").posterior
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", [0, 1, 2])
def test_fit_refuses_an_unwritable_out_before_fitting(capsys, tmp_path, fake_fit, case):
    cases = unwritable(tmp_path)
    if case >= len(cases):
        pytest.skip("no /proc here")
    out, pattern = cases[case]
    calls, _ = fake_fit
    assert main(fit_argv(out)) == 2
    assert pattern in one_error_line(capsys.readouterr().err)
    assert calls == []


def test_train_refuses_an_unwritable_out_before_training(capsys, tmp_path, monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr("sbi_plugins.estimators.train", train)
    out, pattern = unwritable(tmp_path)[0]
    assert main(["train", "cookie", "--out", str(out), "--no-progress"]) == 2
    assert pattern in one_error_line(capsys.readouterr().err)


def test_report_refuses_an_unwritable_out_before_rendering(tmp_path, monkeypatch):
    from sbi_plugins import report

    def render(*args, **kwargs):
        raise AssertionError("rendered before checking --out")

    monkeypatch.setattr(report, "render_report", render)
    out, pattern = unwritable(tmp_path)[1]
    with pytest.raises(OutputError, match=pattern):
        report.write_report({"a": tiny_idata()}, out.parent)


def test_demo_refuses_an_unwritable_out_and_keeps_what_appeared(tmp_path):
    from sbi_plugins.demo import check_output_dir, write_outputs

    with pytest.raises(OutputError, match="is not a directory"):
        check_output_dir(unwritable(tmp_path)[1][0].parent)
    out = tmp_path / "demo"

    def first(tmp: Path) -> None:
        (out / "b.csv").write_text("someone else's")
        tmp.write_text("a")

    with pytest.raises(OutputError, match=r"b.csv appeared.*b-1.csv"):
        write_outputs(out, {"a.csv": first, "b.csv": lambda t: t.write_text("b")})
    assert (out / "a.csv").read_text() == "a"
    assert (out / "b.csv").read_text() == "someone else's"
    assert (out / "b-1.csv").read_text() == "b"


# signals

# a fit whose result takes a minute to write; no Pyro or ArviZ to import
SLOW_FIT = textwrap.dedent(
    """
    import signal, sys, time, types

    # a shell's background job inherits SIGINT ignored; Ctrl-C must reach this one
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class SlowFit:
        def to_netcdf(self, path):
            with open(path, "wb") as fh:
                fh.write(b"half a fit")
            print("writing", flush=True)
            time.sleep(60)

    runner = types.ModuleType("sbi_plugins.runner")
    runner.fit = lambda *args, **kwargs: SlowFit()
    sys.modules["sbi_plugins.runner"] = runner
    from sbi_plugins.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "signum,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "")]
)
def test_a_signal_mid_write_leaves_no_temporary_file(tmp_path, signum, code, word):
    out = tmp_path / "out" / "fit.nc"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_FIT, *fit_argv(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(leftovers(out.parent)) == 1  # the temporary file, mid-write
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)  # a loaded CI machine is slow to exit
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and word in err
    assert list(out.parent.iterdir()) == []


def test_terminate_as_interrupt_restores_the_default_handler():
    with outputs.terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
