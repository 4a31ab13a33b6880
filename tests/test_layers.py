"""The layers of DESIGN.md, checked on the source: a module imports only from its
own layer or the layers below (anywhere in the module, lazy imports included;
`if TYPE_CHECKING:` blocks are annotations, not dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sbi_plugins"

LAYERS = [
    # the plugin contract and what plugins and the registry need; the estimator
    # file format is read by the registry to check a plugin's shipped files
    (
        "plugin",
        {
            "errors",
            "keywords",
            "versions",
            "contract",
            "outputs",
            "plugin",
            "default_plugins",
            "estimators.format",
        },
    ),
    ("data", {"data", "parallel"}),
    ("estimators", {"estimators"}),
    ("likelihoods", {"likelihoods"}),
    ("model", {"model"}),
    ("inference", {"inference"}),
    ("results", {"results"}),
    ("fit", {"runner", "check", "batch"}),
    ("surface", {"api", "cli", "quantiles", "plot", "report", "demo", "__init__"}),
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside the package (longest match)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of sbi_plugins, outside TYPE_CHECKING."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sbi_plugins":
                found += [(node.lineno, a.name) for a in node.names]
            elif node.module.startswith("sbi_plugins."):
                base = node.module.removeprefix("sbi_plugins.")
                found += [(node.lineno, base)]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name.removeprefix("sbi_plugins."))
                for a in node.names
                if a.name.startswith("sbi_plugins.")
            ]
    return found


def _upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = layer_of(module)
        for line, target in _imports(ast.parse(path.read_text())):
            if target == "__version__":
                continue
            if layer_of(target) > own:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {module} "
                    f"({LAYERS[own][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    return problems


def test_every_import_points_down_the_layers():
    assert _upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The scan itself: an import of the model from the data layer is found."""
    source = "from sbi_plugins.model.model import build_model\n"
    found = _imports(ast.parse(source))
    assert found == [(1, "model.model")]
    assert layer_of("model.model") > layer_of("data")


@pytest.mark.parametrize("module", ["data", "contract", "plugin.registry"])
def test_the_lower_layers_load_without_sbi_or_pyro(module):
    """`sbi-plugins list` and data checks stay quick: importing the plugin layer or
    data does not import sbi, Pyro or ArviZ (torch it may: priors are torch
    distributions)."""
    import subprocess
    import sys

    code = (
        f"import sbi_plugins.{module}, sys; "
        "print(sorted(m for m in ('sbi', 'pyro', 'arviz') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
