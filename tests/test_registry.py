"""Plugins load from entry points, fail alone, and clash loudly."""

import json
import re
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_plugins import hookimpl
from sbi_plugins.cli import main
from sbi_plugins.contract import (
    EstimatorArtifact,
    Observable,
    Parameter,
    PriorFamily,
    Simulator,
)
from sbi_plugins.errors import PluginError
from sbi_plugins.plugin.registry import PluginLoadWarning, Registry, get_registry
from tests.conftest import REPO


def toy_simulator(name="toy", simulate=None):
    return Simulator(
        name=name,
        parameters=(Parameter("rate", 0.1, 10.0),),
        observables=(Observable("count", "count"),),
        simulate=simulate or (lambda theta, rng: rng.poisson(theta).astype(float)),
    )


class ToyPlugin:
    def __init__(self, simulator):
        self.simulator = simulator

    @hookimpl
    def register_simulators(self, register):
        register(self.simulator)


class RaisingPlugin:
    @hookimpl
    def register_simulators(self, register):
        raise RuntimeError("hook exploded")


def test_a_registered_plugin_is_visible_only_inside_its_block(registry):
    with registry.plugin(ToyPlugin(toy_simulator()), name="toy-plugin"):
        assert registry.simulator("toy").name == "toy"
        assert "toy-plugin" in [p.name for p in registry.plugins()]
    with pytest.raises(PluginError, match="unknown simulator 'toy'"):
        registry.simulator("toy")


def test_a_name_in_the_wrong_case_gets_the_right_one_offered(registry):
    with registry.plugin(ToyPlugin(toy_simulator()), name="toy-plugin"):
        with pytest.raises(PluginError, match=r"'TOY' \(did you mean 'toy'\?\)"):
            registry.simulator("TOY")
        with pytest.raises(PluginError, match=r"'toyy' \(did you mean 'toy'\?\)"):
            registry.simulator("toyy")
        with pytest.raises(PluginError, match=r"'zebra'; installed"):
            registry.simulator("zebra")


def test_isolated_registry_does_not_see_installed_plugins(registry):
    assert "cookie" not in registry.simulator_names()
    assert get_registry() is registry
    assert "cookie" in Registry().simulator_names()


def test_builtin_prior_families_are_registered(registry):
    assert {"normal", "gamma"} <= set(registry._catalog_now().priors)


def test_a_raising_hook_is_isolated_and_reported(registry):
    registry.register(RaisingPlugin(), name="broken")
    registry.register(ToyPlugin(toy_simulator()), name="good")
    with pytest.warns(PluginLoadWarning, match="'broken'.*hook exploded"):
        names = registry.simulator_names()
    assert names == ["toy"]
    broken = next(p for p in registry.plugins() if p.name == "broken")
    assert not broken.ok
    assert "RuntimeError: hook exploded" in broken.errors[0]


def test_a_simulator_with_the_wrong_shape_is_refused_at_registration(registry):
    bad = toy_simulator("bad", simulate=lambda theta, rng: np.zeros((len(theta), 3)))
    registry.register(ToyPlugin(bad), name="bad-plugin")
    registry.register(ToyPlugin(toy_simulator()), name="good")
    with pytest.warns(PluginLoadWarning, match=r"shape \(8, 3\)"):
        assert registry.simulator_names() == ["toy"]


def test_strict_mode_makes_failures_fatal(registry, monkeypatch):
    monkeypatch.setenv("SBI_PLUGINS_STRICT", "1")
    registry.register(RaisingPlugin(), name="broken")
    with pytest.raises(PluginError, match="'broken' failed.*SBI_PLUGINS_STRICT"):
        registry.simulator_names()


def test_two_plugins_registering_one_name_clash_naming_both(registry):
    registry.register(ToyPlugin(toy_simulator()), name="first")
    registry.register(ToyPlugin(toy_simulator()), name="second")
    with pytest.warns(PluginLoadWarning, match="'second': simulator 'toy'"):
        registry.simulator_names()
    with pytest.raises(
        PluginError,
        match="'toy' is registered by more than one plugin: "
        "plugin 'first' and plugin 'second'",
    ):
        registry.simulator("toy")


def test_incompatible_contract_version_is_refused_with_the_supported_ones(registry):
    sim = toy_simulator()
    object.__setattr__(sim, "contract_version", 99)
    registry.register(ToyPlugin(sim), name="future")
    with pytest.warns(PluginLoadWarning, match="contract version 99.*supports 1"):
        assert registry.simulator_names() == []


def test_unknown_simulator_lists_what_is_installed(registry):
    registry.register(ToyPlugin(toy_simulator()), name="good")
    with pytest.raises(PluginError, match="installed simulators: toy"):
        registry.simulator("nope")


# -- no plugin silently changes another's model -------------------------------------

COOKIE_FILE = REPO / "plugins/cookie/sbi_plugins_cookie/cookie-categorical.pt"


def plugin_blocks(listing: str) -> dict[str, str]:
    """`sbi-plugins list` output, split into one text block per plugin."""
    blocks = re.split(r"\n(?=\S)", listing.strip())
    return {block.split(" ", 1)[0]: block for block in blocks}


def _impostor_gamma(mu, sigma):
    """What the issue saw: a 'gamma' that put cookie's lam at 1.02 instead of 9.3."""
    return torch.distributions.Exponential(torch.ones_like(mu))


def gamma_plugin(name="gamma", **opts):
    """A plugin registering its own prior family `name` (hook options `opts`)."""

    class GammaPlugin:
        @hookimpl(**opts)
        def register_priors(self, register):
            register(
                PriorFamily(
                    name,
                    ("mu", "sigma"),
                    _impostor_gamma,
                    lambda parameter: {},
                )
            )

    return GammaPlugin()


@pytest.mark.parametrize("opts", [{}, {"tryfirst": True}, {"trylast": True}])
def test_a_prior_family_clash_keeps_the_built_in_and_cookies_prior(registry, opts):
    import sbi_plugins_cookie

    from sbi_plugins.default_plugins.priors import GAMMA
    from sbi_plugins.model.pooling import plan_parameters

    registry.register(sbi_plugins_cookie, name="cookie")
    registry.register(gamma_plugin(**opts), name="impostor")
    with pytest.warns(
        PluginLoadWarning,
        match=r"'impostor'.*prior family 'gamma' is already registered by the "
        r"built-in plugin 'sbi_plugins.default_plugins.priors'",
    ):
        assert registry.prior_family("gamma") is GAMMA
    (plan,) = plan_parameters(registry.simulator("cookie"), {"lam": "partial"})
    assert plan.family is GAMMA and plan.prior.family == "gamma"
    info = {p.name: p for p in registry.plugins()}
    assert not info["impostor"].ok and info["impostor"].priors == []
    assert "may not replace it" in info["impostor"].errors[0]
    assert info["cookie"].ok and info["sbi_plugins.default_plugins.priors"].ok


def test_a_prior_family_two_plugins_register_is_used_by_neither(registry):
    registry.register(gamma_plugin("weibull"), name="first")
    registry.register(gamma_plugin("weibull"), name="second")
    with pytest.warns(PluginLoadWarning, match="'second'.*'weibull'.*'first'"):
        registry.plugins()
    with pytest.raises(
        PluginError,
        match="prior family 'weibull' is registered by more than one plugin: "
        "plugin 'first' and plugin 'second'",
    ):
        registry.prior_family("weibull")
    info = {p.name: p for p in registry.plugins()}
    assert info["first"].ok and not info["second"].ok


def test_a_simulator_clash_fails_the_second_plugin_in_list_and_json(registry, capsys):
    registry.register(ToyPlugin(toy_simulator()), name="first")
    registry.register(ToyPlugin(toy_simulator()), name="second")
    with pytest.warns(PluginLoadWarning, match="plugin 'second': simulator 'toy'"):
        assert main(["list"]) == 0
    blocks = plugin_blocks(capsys.readouterr().out)
    assert "[ok]" in blocks["first"] and "simulators: toy" in blocks["first"]
    assert "second (local) [FAILED]" in blocks["second"]
    assert (
        "  error: simulator 'toy' is already registered by plugin 'first'; neither "
        "is used until one is uninstalled" in blocks["second"]
    )
    assert main(["list", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["first"]["ok"] and not entries["second"]["ok"]
    assert entries["second"]["simulators"] == []
    assert (
        "'toy' is already registered by plugin 'first'"
        in (entries["second"]["errors"][0])
    )


def test_strict_mode_makes_a_clash_fatal(registry, monkeypatch):
    monkeypatch.setenv("SBI_PLUGINS_STRICT", "1")
    registry.register(gamma_plugin(), name="impostor")
    with pytest.raises(PluginError, match="'impostor' failed: prior family 'gamma'"):
        registry.prior_family("gamma")


class ShipsEstimator:
    def __init__(self, simulator, sha256, path=COOKIE_FILE):
        self.simulator, self.sha256, self.path = simulator, sha256, path

    @hookimpl
    def register_estimators(self, register):
        register(EstimatorArtifact(self.simulator, self.path, self.sha256))


def test_an_estimator_for_another_plugins_simulator_is_refused(registry, tmp_path):
    import sbi_plugins_cookie

    sha256 = sbi_plugins_cookie.ESTIMATOR_SHA256
    theirs = tmp_path / "theirs.pt"
    theirs.write_bytes(COOKIE_FILE.read_bytes())
    # registered first, so load order would have put its file first
    registry.register(ShipsEstimator("cookie", sha256, theirs), name="foreign")
    registry.register(sbi_plugins_cookie, name="cookie")
    with pytest.warns(
        PluginLoadWarning,
        match=r"plugin 'foreign': estimator for simulator 'cookie' refused: that "
        r"simulator belongs to plugin 'cookie', whose "
        r"Simulator.estimator_providers does not name 'foreign'",
    ):
        shipped = registry.estimator_artifacts("cookie")
    assert [Path(str(a.path)) for a in shipped] == [COOKIE_FILE]
    info = {p.name: p for p in registry.plugins()}
    assert info["cookie"].ok and info["cookie"].estimators == ["cookie:default"]
    assert not info["foreign"].ok and info["foreign"].estimators == []


def test_a_simulator_can_accept_another_plugins_estimators(registry):
    import sbi_plugins_cookie

    sha256 = sbi_plugins_cookie.ESTIMATOR_SHA256
    sim = toy_simulator()
    object.__setattr__(sim, "estimator_providers", ("toy_estimators",))
    registry.register(ToyPlugin(sim), name="toy")
    registry.register(ShipsEstimator("toy", sha256), name="toy-estimators")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert [a.path for a in registry.estimator_artifacts("toy")] == [COOKIE_FILE]
        assert all(p.ok for p in registry.plugins())


def test_an_estimator_for_an_unregistered_simulator_is_kept(registry):
    """It is only loaded against a Simulator object, whose metadata it must match."""
    import sbi_plugins_cookie

    registry.register(
        ShipsEstimator("nobody", sbi_plugins_cookie.ESTIMATOR_SHA256), name="shipper"
    )
    assert len(registry.estimator_artifacts("nobody")) == 1


class MisspelledHooks:
    @hookimpl
    def register_simulator(self, register):
        register(toy_simulator())

    @hookimpl(optionalhook=True)
    def register_widgets(self, register):
        """Declared optional: pluggy's check_pending accepts it, and so do we."""


def test_a_misspelled_hook_is_reported(registry, capsys):
    registry.register(MisspelledHooks(), name="typo")
    with pytest.warns(
        PluginLoadWarning,
        match=r"plugin 'typo': unknown hook 'register_simulator' \(hooks: "
        r"register_estimators, register_priors, register_simulators\); did you "
        r"mean 'register_simulators'\?",
    ):
        assert main(["list"]) == 0
    block = plugin_blocks(capsys.readouterr().out)["typo"]
    assert "[FAILED]" in block and "register_widgets" not in block
    registry.unregister("typo")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert all(p.ok for p in registry.plugins())


# -- real entry points, from distributions placed on sys.path -----------------------


def make_distribution(root, dist, module, body):
    """A minimal installed distribution: a module, a .dist-info, an entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n"
    )
    (info / "entry_points.txt").write_text(f"[sbi_plugins]\n{module} = {module}\n")


GOOD_PLUGIN = """
    import numpy as np
    from sbi_plugins import hookimpl
    from sbi_plugins.contract import Observable, Parameter, Simulator

    @hookimpl
    def register_simulators(register):
        register(Simulator(
            name="{name}",
            parameters=(Parameter("rate", 0.1, 10.0),),
            observables=(Observable("count", "count"),),
            simulate=lambda theta, rng: rng.poisson(theta).astype(float),
        ))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("ep_good", "ep_broken", "ep_twin_a", "ep_twin_b"):
        sys.modules.pop(name, None)


def test_entry_point_plugins_load_and_a_broken_import_is_skipped(site):
    make_distribution(site, "ep-good", "ep_good", GOOD_PLUGIN.format(name="epsim"))
    make_distribution(site, "ep-broken", "ep_broken", "import not_a_module_anywhere\n")
    registry = Registry()
    with pytest.warns(PluginLoadWarning, match="'ep_broken'.*ModuleNotFoundError"):
        registry._ensure_loaded()
    assert "epsim" in registry.simulator_names()
    info = {p.name: p for p in registry.plugins()}
    assert (
        info["ep_good"].distribution == "ep-good" and info["ep_good"].version == "0.3"
    )
    assert (
        not info["ep_broken"].ok
        and "not_a_module_anywhere" in info["ep_broken"].errors[0]
    )


def test_load_plugins_variable_restricts_what_loads(site, monkeypatch):
    make_distribution(site, "ep-good", "ep_good", GOOD_PLUGIN.format(name="epsim"))
    make_distribution(site, "ep-broken", "ep_broken", "import not_a_module_anywhere\n")
    monkeypatch.setenv("SBI_PLUGINS_LOAD_PLUGINS", "ep-good")
    registry = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert registry.simulator_names() == ["epsim"]
    monkeypatch.setenv("SBI_PLUGINS_LOAD_PLUGINS", "")
    assert Registry().simulator_names() == []


def test_clash_between_distributions_names_both(site, monkeypatch):
    make_distribution(site, "ep-twin-a", "ep_twin_a", GOOD_PLUGIN.format(name="twin"))
    make_distribution(site, "ep-twin-b", "ep_twin_b", GOOD_PLUGIN.format(name="twin"))
    monkeypatch.setenv("SBI_PLUGINS_LOAD_PLUGINS", "ep-twin-a,ep-twin-b")
    registry = Registry()
    with pytest.warns(PluginLoadWarning, match="'ep_twin_b'.*distribution ep-twin-a"):
        registry.simulator_names()
    with pytest.raises(
        PluginError, match="distribution ep-twin-a 0.3.*distribution ep-twin-b 0.3"
    ):
        registry.simulator("twin")


def test_installed_cookie_plugin_is_listed_with_its_version():
    from importlib.metadata import version

    from sbi_plugins import list_plugins

    cookie = next(p for p in list_plugins() if p.name == "cookie")
    assert cookie.distribution == "sbi-plugins-cookie"
    assert cookie.version == version("sbi-plugins-cookie")
    assert cookie.simulators == ["cookie"] and cookie.estimators == ["cookie:default"]
    assert json.loads(json.dumps(cookie.to_dict()))["ok"] is True
