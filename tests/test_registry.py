"""Plugins load from entry points, fail alone, and clash loudly."""

import json
import sys
import textwrap
import warnings

import numpy as np
import pytest

from sbi_plugins import hookimpl
from sbi_plugins.contract import Observable, Parameter, Simulator
from sbi_plugins.errors import PluginError
from sbi_plugins.registry import PluginLoadWarning, Registry, get_registry


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
    with pytest.raises(
        PluginError, match="distribution ep-twin-a 0.3.*distribution ep-twin-b 0.3"
    ):
        Registry().simulator("twin")


def test_installed_cookie_plugin_is_listed_with_its_version():
    from importlib.metadata import version

    from sbi_plugins import list_plugins

    cookie = next(p for p in list_plugins() if p.name == "cookie")
    assert cookie.distribution == "sbi-plugins-cookie"
    assert cookie.version == version("sbi-plugins-cookie")
    assert cookie.simulators == ["cookie"] and cookie.estimators == ["cookie:default"]
    assert json.loads(json.dumps(cookie.to_dict()))["ok"] is True
