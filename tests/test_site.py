"""The documentation site builds with `mkdocs build --strict` (a broken link, a page
missing from the nav or a bad docstring reference fails it), and its CLI and API
references come from the code."""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys

import pytest

from sbi_plugins.cli import build_parser
from tests.conftest import REPO

pytest.importorskip("mkdocs", reason="the docs extra is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def page(site, name: str) -> str:
    return html.unescape((site / name / "index.html").read_text())


def test_every_docs_page_is_built(site):
    for md in (REPO / "docs").glob("*.md"):
        built = site / "index.html" if md.stem == "index" else site / md.stem
        assert built.exists(), f"{md.name} is not in the site (add it to the nav)"


def test_cli_reference_lists_every_command_and_option(site):
    text = page(site, "cli")
    assert "<!-- cli-reference -->" not in text
    parser = build_parser()
    (commands,) = [
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert set(commands.choices) >= {"list", "fit", "compare", "report", "demo"}
    for name, sub in commands.choices.items():
        assert f"sbi-plugins {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option}"
            if not action.option_strings and action.dest != "help":
                assert action.dest in text, f"{name} {action.dest}"


def test_api_reference_is_generated_from_docstrings(site):
    text = page(site, "api")
    for name in (
        "sbi_plugins.api.fit",
        "sbi_plugins.api.compare",
        "sbi_plugins.contract.Simulator",
        "sbi_plugins.plot.plot_ppc",
        "sbi_plugins.plot.plot_domain",
        "sbi_plugins.report.write_report",
    ):
        assert f'id="{name}"' in text, name
    import sbi_plugins.plot

    first_line = sbi_plugins.plot.plot_domain.__doc__.split("\n")[0].strip()
    assert first_line in text
