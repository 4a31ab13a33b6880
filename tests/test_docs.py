"""Every Python block in the docs runs, in order, with quick sampler settings."""

import re

import pytest

import sbi_plugins
from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
QUICK = {"draws": 50, "tune": 50, "chains": 2, "progress": False}


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name
)
def test_page_runs(page, tmp_path, monkeypatch):
    real_fit = sbi_plugins.fit

    def quick_fit(*args, **kwargs):
        return real_fit(*args, **{**kwargs, **QUICK})

    monkeypatch.setattr(sbi_plugins, "fit", quick_fit, raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    for image in re.findall(r'savefig\("([^"]+)"\)', page.read_text()):
        assert (tmp_path / image).read_bytes()[:4] == b"\x89PNG", image
