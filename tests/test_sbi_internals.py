"""sbi's and nflows' internals in one module, and its start-up self-test."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from sbi.inference.trainers.base import NeuralInference
from sbi.neural_nets.estimators import CategoricalMADE, MixedDensityEstimator
from torch.utils.data import DataLoader

import sbi_plugins
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import sbi_internals
from sbi_plugins.estimators.networks import build_network

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sbi_plugins"
INTERNALS = PACKAGE / "estimators" / "sbi_internals.py"


@pytest.fixture
def fresh_self_test():
    """The self-test runs afresh in the test and is re-run by the next user."""
    sbi_internals._self_test_failure.cache_clear()
    yield
    sbi_internals._self_test_failure.cache_clear()


def _declared() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {r.name: r.specifier for r in requirements}


def test_supported_sbi_range_is_the_one_pyproject_declares():
    declared = _declared()
    assert declared["sbi"] == SpecifierSet(sbi_internals.SUPPORTED_SBI)
    assert importlib.metadata.version("sbi") in declared["sbi"]


def test_nflows_is_declared_within_what_sbi_asks_for():
    declared = _declared()["nflows"]
    assert importlib.metadata.version("nflows") in declared
    (wanted,) = [
        Requirement(r).specifier
        for r in importlib.metadata.requires("sbi")
        if Requirement(r).name == "nflows" and Requirement(r).marker is None
    ]
    low = next(s.version for s in declared if s.operator == ">=")
    assert low in wanted  # the floor we allow is one sbi accepts


@pytest.mark.parametrize("purpose", ["scoring", "training"])
def test_self_test_passes_and_is_cheap(purpose, fresh_self_test):
    sbi_internals.check_sbi_internals(purpose)  # first run: imports on first use
    seconds = min(sbi_internals.self_test_seconds(purpose) for _ in range(3))
    assert sbi_internals._self_test_failure(purpose) is None
    assert seconds < 0.5, f"the {purpose} self-test took {seconds:.2f} s"


def test_self_test_runs_once_per_process(fresh_self_test, monkeypatch):
    calls = []
    checks = {"scoring": (("counted", lambda: calls.append(1)),)}
    monkeypatch.setattr(sbi_internals, "SELF_TEST_CHECKS", checks)
    for _ in range(3):
        sbi_internals.check_sbi_internals("scoring")
    assert calls == [1]


def test_self_test_leaves_torch_global_state_as_it_was(fresh_self_test):
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    sbi_internals.check_sbi_internals("training")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def _drop_attribute_after_init(monkeypatch, cls, name):
    init = cls.__init__

    def broken(self, *args, **kwargs):
        init(self, *args, **kwargs)
        delattr(self, name)

    monkeypatch.setattr(cls, "__init__", broken)


def _logits_depending_on_input(monkeypatch):
    forward = CategoricalMADE.forward

    def broken(self, input, condition=None):
        logits = forward(self, input, condition)
        return logits + input.sum(-1, keepdim=True) * torch.arange(logits.shape[-1])

    monkeypatch.setattr(CategoricalMADE, "forward", broken)


BREAKAGES = {
    "sbi's trainer without _train_epoch": (
        "training",
        lambda mp: mp.delattr(NeuralInference, "_train_epoch"),
        r"sbi's NLE trainer: .*'_train_epoch'",
    ),
    "MNLE without condition_embedding": (
        "scoring",
        lambda mp: _drop_attribute_after_init(
            mp, MixedDensityEstimator, "condition_embedding"
        ),
        r"MNLE .*MixedDensityEstimator has no attribute 'condition_embedding'",
    ),
    "nflows spline without tail_bound": (
        "scoring",
        lambda mp: _drop_attribute_after_init(
            mp, PiecewiseRationalQuadraticCouplingTransform, "tail_bound"
        ),
        r"MNLE .*no attribute 'tail_bound'",
    ),
    "first variable's logits depend on the input": (
        "scoring",
        _logits_depending_on_input,
        r"categorical estimator: .*per-group categorical path differs from sbi's "
        r"log_prob",
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_a_broken_internal_fails_naming_it_and_the_supported_sbi(
    case, fresh_self_test, monkeypatch
):
    purpose, breaks, what = BREAKAGES[case]
    breaks(monkeypatch)
    with pytest.raises(EstimatorError) as raised:
        sbi_internals.check_sbi_internals(purpose)
    message = str(raised.value)
    installed = importlib.metadata.version("sbi")
    prefix = (
        f"sbi-plugins {sbi_plugins.__version__} needs sbi "
        f"{sbi_internals.SUPPORTED_SBI}; found sbi {installed}: "
    )
    assert message.startswith(prefix), message
    assert re.search(what, message), message


def test_the_message_names_the_installed_sbi_version(fresh_self_test, monkeypatch):
    monkeypatch.setattr(sbi_internals, "sbi_version", lambda: "0.31.2")
    monkeypatch.delattr(NeuralInference, "_train_epoch")
    with pytest.raises(
        EstimatorError, match=r"needs sbi >=0\.27,<0\.28; found sbi 0\.31\.2: "
    ):
        sbi_internals.check_sbi_internals("training")


def test_training_runs_the_self_test_before_simulating(
    cookie, fresh_self_test, monkeypatch
):
    from sbi_plugins.estimators import training

    monkeypatch.delattr(NeuralInference, "_train_epoch")
    monkeypatch.setattr(
        training, "simulate_training_data", lambda *a, **k: pytest.fail("simulated")
    )
    with pytest.raises(EstimatorError, match="_train_epoch"):
        training.train(cookie, num_simulations=1000, progress=False)


def test_scoring_runs_the_self_test(
    cookie, tiny_cookie_estimator, fresh_self_test, monkeypatch
):
    from sbi_plugins.likelihoods.distribution import Likelihood

    _logits_depending_on_input(monkeypatch)
    with pytest.raises(EstimatorError, match="per-group categorical path"):
        Likelihood(cookie, tiny_cookie_estimator)
    Likelihood(cookie)  # the exact likelihood needs no sbi internals


@pytest.mark.parametrize(
    "broken, reason",
    [
        (lambda lp: lp + 0.5, r"off by up to 0\.5 in log-probability"),
        (lambda lp: lp[:-1], r"shape \(5,\) instead of \(6,\)"),
        (lambda lp: 1 / 0, r"failed with ZeroDivisionError"),
        (lambda lp: lp * float("nan"), r"NaN in its log-probability"),
    ],
)
def test_per_estimator_fallback_warns_with_the_reason(
    cookie, tiny_cookie_estimator, monkeypatch, broken, reason
):
    from sbi_plugins.estimators import grouped
    from sbi_plugins.likelihoods.distribution import Likelihood

    sbi_internals.check_sbi_internals("scoring")  # passes, before the break
    count_log_prob = grouped.count_log_prob
    monkeypatch.setattr(
        grouped, "count_log_prob", lambda *a, **k: broken(count_log_prob(*a, **k))
    )
    with pytest.warns(UserWarning, match=r"cookie: the per-group .*" + reason):
        lik = Likelihood(cookie, tiny_cookie_estimator)
    assert lik._grouped is None  # row by row, the numbers sbi gives


def test_loader_tensors_refuses_what_is_not_a_tensor_dataset():
    with pytest.raises(sbi_internals.SbiInternalsError, match="not a TensorDataset"):
        sbi_internals.loader_tensors(DataLoader(list(range(4))))


def test_replacing_the_choice_net_refreshes_the_cached_parts():
    theta = torch.rand(20, 2)
    x = torch.stack([torch.rand(20) + 0.1, torch.randint(0, 2, (20,)).float()], 1)
    config = {"hidden_features": 8, "num_transforms": 1, "num_categories": [2]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_network("mnle", config, theta, x)
        other = build_network("mnle", config, theta, x)
    before = sbi_internals.mnle_parts(net)
    assert sbi_internals.mnle_parts(net) is before  # cached
    new = sbi_internals.mnle_parts(other).choice_estimator
    sbi_internals.replace_choice_net(net, new)
    assert sbi_internals.mnle_parts(net).choice_estimator is new
    assert sbi_internals.mnle_parts(net).choice_net is sbi_internals.mass_net(new)


# --------------------------------------------------------------------------------
# nothing but sbi_internals.py touches sbi's or nflows' internals

STRUCTURE = {
    "discrete_net",
    "continuous_net",
    "condition_embedding",
    "log_transform_input",
    "embedding_net",
    "transform_net",
    "spline_predictor",
    "num_bins",
    "tail_bound",
    "min_bin_width",
    "min_bin_height",
    "min_derivative",
    "num_variables",
    "tensors",
}
"""sbi's and nflows' internal structure that has no underscore to give it away."""

ALWAYS = {
    "_train_epoch",
    "_neural_net",
    "_summary",
    "_transform",
    "_transforms",
    "_embedding_net",
    "_distribution",
}
"""sbi/nflows privates flagged even in a module that defines the same name (an
override of `_train_epoch` is a use of it)."""


def _private_names() -> set[str]:
    """Every underscore attribute of the sbi and nflows objects sbi-plugins uses,
    beyond what torch modules and plain objects have."""
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from sbi.inference import NLE
    from sbi.neural_nets.estimators import CategoricalMassEstimator

    from sbi_plugins.estimators.training import NoTracker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theta = torch.rand(20, 2)
        x = torch.stack([torch.rand(20) + 0.1, torch.randint(0, 2, (20,)).float()], 1)
        mnle = build_network(
            "mnle",
            {"hidden_features": 8, "num_transforms": 1, "num_categories": [2]},
            theta,
            x,
        )
    parts = sbi_internals.mnle_parts(mnle)
    objects = [
        NLE,
        NLE(tracker=NoTracker(), show_progress_bars=False),
        Flow,
        CategoricalMADE,
        CategoricalMassEstimator,
        MixedDensityEstimator,
        PiecewiseRationalQuadraticCouplingTransform,
        mnle,
        parts.choice_net,
        parts.flow_estimator,
        parts.flow_estimator.net,
        CompositeTransform([]),
        *(s.transform_net for s in parts.flow.splines),
    ]
    names = {n for o in objects for n in [*dir(o), *vars(o)] if n.startswith("_")}
    common = (
        set(dir(torch.nn.Module())) | set(vars(torch.nn.Module())) | set(dir(object()))
    )
    return {n for n in names - common if not n.startswith("__")} - {
        sbi_internals._MNLE_PARTS
    }


def _violations(source: str, label: str, private: set[str]) -> list[str]:
    """Accesses to sbi/nflows internals in `source`: attributes from `private` or
    `STRUCTURE`, `net.net`, imports of nflows or of sbi's private names."""
    tree = ast.parse(source, filename=label)
    # a module's own methods and attributes (`self._sample`) are its own business
    own = {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)
    } | {
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign | ast.AnnAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Attribute)
    }
    found = []
    for node in ast.walk(tree):
        where = f"{label}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            if node.attr in (private - (own - ALWAYS)) | STRUCTURE:
                found.append(f"{where}: .{node.attr}")
            elif (
                node.attr == "net"
                and isinstance(node.value, ast.Attribute | ast.Name)
                and getattr(node.value, "attr", getattr(node.value, "id", None))
                == "net"
            ):
                found.append(f"{where}: net.net")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
            )
            names = (
                [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            )
            for module in modules:
                parts = module.split(".")
                if parts[0] == "nflows":
                    found.append(f"{where}: import {module}")
                elif parts[0] == "sbi" and (
                    any(p.startswith("_") for p in parts)
                    or any(n.startswith("_") for n in names)
                ):
                    found.append(f"{where}: import of an sbi private from {module}")
    return found


def test_only_sbi_internals_touches_sbi_and_nflows_privates():
    private = _private_names()
    assert private >= ALWAYS  # the harvest finds what we know of
    found = [
        v
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != INTERNALS
        for v in _violations(path.read_text(), str(path.relative_to(REPO)), private)
    ]
    assert not found, "sbi/nflows internals outside sbi_internals.py:\n" + "\n".join(
        found
    )


def test_the_scan_would_catch_the_old_accesses():
    """The scan is not vacuous: the accesses this module replaced are caught."""
    source = (
        "from nflows.transforms import coupling\n"
        "from sbi.inference.trainers.base import _private\n"
        "made = net.discrete_net.net\n"
        "flow = net.net\n"
        "ts = flow._transform._transforms\n"
        "class Trainer(NLE):\n"
        "    def _train_epoch(self):\n"
        "        return super()._train_epoch()\n"
        "rows = loader.dataset.tensors\n"
        "bound = spline.tail_bound\n"
    )
    text = "\n".join(_violations(source, "sample.py", _private_names()))
    for needle in (
        "import nflows",
        "sbi private",
        ".discrete_net",
        "net.net",
        "._transforms",
        "._transform",
        "._train_epoch",
        ".tensors",
        ".tail_bound",
    ):
        assert needle in text, (needle, text)
