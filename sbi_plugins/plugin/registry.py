"""Plugin discovery and fault isolation.

Plugins load lazily from the `sbi_plugins` entry-point group. A plugin that fails to
import, or whose hook raises or registers something invalid, is skipped with a warning
that names it; the others load. An estimator file a plugin registers is verified (safe
load, checksums) before it is used or listed: a bad one is refused, and its plugin is
listed as failed with the reason. `SBI_PLUGINS_LOAD_PLUGINS` (comma-separated plugin
or distribution names, empty for none) restricts what loads, as `LLM_LOAD_PLUGINS`
does; `SBI_PLUGINS_STRICT=1` turns every loading failure into an error.

No plugin can silently change another's model. A name clash is refused: a prior
family or simulator name that a built-in already registered stays the built-in's,
and one registered by two plugins is used by neither (its lookup names both) until
one goes. An estimator file for another plugin's simulator is refused unless that
simulator lists the plugin in `Simulator.estimator_providers`. A hook name that no
hookspec has (a misspelling, which pluggy would ignore) is reported. Each of these is
a failure of the offending plugin, with the reason, in `sbi-plugins list`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from sbi_plugins.contract import (
    CONTRACT_VERSION,
    EstimatorArtifact,
    PriorFamily,
    Simulator,
)
from sbi_plugins.errors import ContractError, EstimatorError, PluginError
from sbi_plugins.estimators.format import read_payload
from sbi_plugins.plugin import hookspecs

ENTRY_POINT_GROUP = "sbi_plugins"
LOAD_PLUGINS_ENV = "SBI_PLUGINS_LOAD_PLUGINS"
STRICT_ENV = "SBI_PLUGINS_STRICT"
DEFAULT_PLUGINS = ("sbi_plugins.default_plugins.priors",)
SUPPORTED_CONTRACT_VERSIONS = (CONTRACT_VERSION,)


class PluginLoadWarning(UserWarning):
    """A plugin was skipped; the others still work."""


class _Refused(ContractError):
    """One registration was refused (a clash, a foreign estimator); the plugin's
    other registrations still load, so the warning does not say it was skipped."""


@dataclass
class PluginInfo:
    """What `list_plugins()` reports for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    simulators: list[str] = field(default_factory=list)
    priors: list[str] = field(default_factory=list)
    estimators: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class _Catalog:
    """Everything the loaded plugins registered, with who registered it."""

    simulators: dict[str, Simulator] = field(default_factory=dict)
    simulator_owner: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    priors: dict[str, PriorFamily] = field(default_factory=dict)
    prior_owner: dict[str, str] = field(default_factory=dict)
    prior_conflicts: dict[str, list[str]] = field(default_factory=dict)
    estimators: dict[str, list[EstimatorArtifact]] = field(default_factory=dict)
    unverified: list[tuple[EstimatorArtifact, PluginInfo]] = field(default_factory=list)
    refused: list[tuple[EstimatorArtifact, str]] = field(default_factory=list)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class Registry:
    """A pluggy PluginManager plus the catalog its hooks produced."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._info: dict[str, PluginInfo] = {}
        self._catalog: _Catalog | None = None

    # -- loading -----------------------------------------------------------------

    def _fail(self, info: PluginInfo, message: str, *, skipped: bool = True) -> None:
        info.errors.append(message)
        if _strict():
            raise PluginError(
                f"plugin {info.name!r} failed: {message} ({STRICT_ENV} is set)"
            )
        warnings.warn(
            f"sbi-plugins: {'skipped ' if skipped else ''}plugin {info.name!r}: "
            f"{message}",
            PluginLoadWarning,
            stacklevel=4,
        )

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import importlib

        for module_name in DEFAULT_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
            self._info[module_name] = PluginInfo(
                module_name, "sbi-plugins", _version("sbi-plugins")
            )
        if self._load_entry_points:
            self._load_from_entry_points()

    def _load_from_entry_points(self) -> None:
        allowed = _allowed_names()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else None
            if allowed is not None and not ({ep.name, dist} & allowed):
                continue
            if self.pm.has_plugin(ep.name):
                continue
            info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else None)
            self._info[ep.name] = info
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or any object with hookimpls)."""
        self._ensure_loaded()
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self.pm.register(plugin, name=name)
        self._info[name] = PluginInfo(name)
        self._catalog = None
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._info.pop(name, None)
        self._catalog = None

    @contextlib.contextmanager
    def plugin(self, plugin: object, name: str | None = None) -> Iterator[str]:
        """Register `plugin` for the duration of a `with` block (tests use this)."""
        registered = self.register(plugin, name)
        try:
            yield registered
        finally:
            self.unregister(registered)

    # -- collecting registrations ----------------------------------------------

    def _catalog_now(self) -> _Catalog:
        self._ensure_loaded()
        if self._catalog is not None:
            return self._catalog
        catalog = _Catalog()
        for name, info in self._info.items():
            fresh = PluginInfo(info.name, info.distribution, info.version)
            fresh.errors = [e for e in info.errors if e.startswith("import failed")]
            catalog.plugins[name] = fresh
        self._check_hook_names(catalog)
        self._call_hook("register_priors", catalog, self._add_prior)
        self._call_hook("register_simulators", catalog, self._add_simulator)
        self._call_hook("register_estimators", catalog, self._add_estimator)
        self._catalog = catalog
        return catalog

    def _check_hook_names(self, catalog: _Catalog) -> None:
        """Report hook implementations that match no hookspec, plugin by plugin.

        pluggy's `check_pending` raises on the first one only; a misspelled hook
        (`register_simulator`) would otherwise register nothing, without a word."""
        hooks = vars(self.pm.hook)
        known = sorted(n for n, c in hooks.items() if n[0] != "_" and c.has_spec())
        for name, caller in hooks.items():
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                info = catalog.plugins.setdefault(
                    impl.plugin_name, PluginInfo(impl.plugin_name)
                )
                close = closest_name(name, known)
                hint = f"; did you mean {close!r}?" if close else ""
                self._fail(
                    info,
                    f"unknown hook {name!r} (hooks: {', '.join(known)}){hint}",
                    skipped=False,
                )

    def _call_hook(
        self,
        hook_name: str,
        catalog: _Catalog,
        add: Callable[[_Catalog, PluginInfo, Any], None],
    ) -> None:
        """Call each plugin's implementation on its own so one failure stays local.

        Built-ins first, then plugins in load order, whatever `tryfirst`/`trylast`
        a plugin sets: what a built-in registers cannot be taken over."""
        order = {name: i for i, name in enumerate(self._info)}
        impls = sorted(
            getattr(self.pm.hook, hook_name).get_hookimpls(),
            key=lambda impl: order.get(impl.plugin_name, len(order)),
        )
        for impl in impls:
            info = catalog.plugins.setdefault(
                impl.plugin_name, PluginInfo(impl.plugin_name)
            )

            def register(obj: Any, _info: PluginInfo = info) -> None:
                try:
                    add(catalog, _info, obj)
                except ContractError as exc:
                    self._fail(_info, str(exc), skipped=not isinstance(exc, _Refused))

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")

    def _add_prior(self, catalog: _Catalog, info: PluginInfo, family: Any) -> None:
        if not isinstance(family, PriorFamily):
            raise ContractError(
                f"register_priors got {type(family).__name__}, expected PriorFamily"
            )
        name = family.name
        owner = catalog.prior_owner.get(name)
        if owner is not None:
            self._refuse_clash(
                catalog, info, "prior family", name, owner, catalog.prior_conflicts
            )
        catalog.priors[name] = family
        catalog.prior_owner[name] = info.name
        info.priors.append(name)

    def _add_simulator(self, catalog: _Catalog, info: PluginInfo, sim: Any) -> None:
        if not isinstance(sim, Simulator):
            raise ContractError(
                f"register_simulators got {type(sim).__name__}, expected Simulator"
            )
        if sim.contract_version not in SUPPORTED_CONTRACT_VERSIONS:
            raise ContractError(
                f"simulator {sim.name!r} targets plugin contract version "
                f"{sim.contract_version}; this sbi-plugins supports "
                f"{', '.join(map(str, SUPPORTED_CONTRACT_VERSIONS))}: upgrade one of "
                "the two"
            )
        sim.validate()
        for pname, prior in sim.population_priors.items():
            if prior.family not in catalog.priors:
                raise ContractError(
                    f"simulator {sim.name!r}: prior family {prior.family!r} of "
                    f"{pname!r} is not registered (known: {', '.join(catalog.priors)})"
                )
        providers = sim.estimator_providers
        if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
            raise ContractError(
                f"simulator {sim.name!r}: estimator_providers must be a tuple of "
                f"plugin or distribution names, got {providers!r}"
            )
        owner = catalog.simulator_owner.get(sim.name)
        if owner is not None:
            self._refuse_clash(
                catalog, info, "simulator", sim.name, owner, catalog.conflicts
            )
        catalog.simulators[sim.name] = sim
        catalog.simulator_owner[sim.name] = info.name
        info.simulators.append(sim.name)

    def _refuse_clash(
        self,
        catalog: _Catalog,
        info: PluginInfo,
        kind: str,
        name: str,
        owner: str,
        conflicts: dict[str, list[str]],
    ) -> None:
        """Refuse a second registration of `name`, naming both plugins.

        A built-in's stays in use; between two plugins, which one loaded first is an
        accident of installation, so the name is used by neither (its lookup names
        both) rather than silently by whichever won."""
        if owner == info.name:
            raise _Refused(f"{kind} {name!r} is registered twice by this plugin")
        if owner in DEFAULT_PLUGINS:
            raise _Refused(
                f"{kind} {name!r} is already registered by the built-in plugin "
                f"{owner!r}; "
                f"plugin {info.name!r} may not replace it: register it under "
                "another name"
            )
        conflicts.setdefault(name, [owner]).append(info.name)
        first = self._describe_owner(catalog, owner)
        raise _Refused(
            f"{kind} {name!r} is already registered by {first}; neither is used "
            f"until one is uninstalled, or {LOAD_PLUGINS_ENV} names only one"
        )

    def _add_estimator(self, catalog: _Catalog, info: PluginInfo, art: Any) -> None:
        if not isinstance(art, EstimatorArtifact):
            raise ContractError(
                f"register_estimators got {type(art).__name__}, "
                "expected EstimatorArtifact"
            )
        owner = catalog.simulator_owner.get(art.simulator)
        owners = catalog.conflicts.get(art.simulator) or ([owner] if owner else [])
        # An estimator for a simulator nobody registers is kept: it is only ever
        # loaded against a Simulator object, whose metadata the file must match.
        if owners and info.name not in owners:
            sim = catalog.simulators[art.simulator]
            accepted = {_normalize(p) for p in sim.estimator_providers}
            if not {_normalize(info.name), _normalize(info.distribution)} & accepted:
                raise _Refused(
                    f"estimator for simulator {art.simulator!r} refused: that "
                    f"simulator belongs to {self._describe_owner(catalog, owners[0])}, "
                    f"whose Simulator.estimator_providers does not name "
                    f"{info.name!r}"
                )
        catalog.estimators.setdefault(art.simulator, []).append(art)
        catalog.unverified.append((art, info))
        info.estimators.append(f"{art.simulator}:{art.recipe}")

    def verify_estimators(self, simulator: str | None = None) -> None:
        """Read each registered estimator file once (safely, no code runs) and check
        its checksums; a bad file is dropped, and its plugin is marked failed with
        the reason. Lazy: reading files costs time that a plain lookup should not."""
        catalog = self._catalog_now()
        wanted = [a for a in catalog.unverified if simulator in (None, a[0].simulator)]
        for pair in wanted:
            catalog.unverified = [a for a in catalog.unverified if a is not pair]
            art, info = pair
            try:
                read_payload(art.path, expected_sha256=art.sha256)
            except EstimatorError as exc:
                shipped = catalog.estimators[art.simulator]
                shipped[:] = [a for a in shipped if a is not art]
                catalog.refused.append((art, str(exc)))
                label = f"{art.simulator}:{art.recipe}"
                if label in info.estimators:
                    info.estimators.remove(label)
                self._fail(
                    info, f"refused estimator file for {label}: {exc}", skipped=False
                )

    # -- queries ---------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every plugin, with its estimator files verified (see `verify_estimators`)."""
        self.verify_estimators()
        return list(self._catalog_now().plugins.values())

    def simulator_names(self) -> list[str]:
        return sorted(self._catalog_now().simulators)

    def simulator(self, name: str | Simulator) -> Simulator:
        """Look a simulator up by name; a Simulator object passes through."""
        if isinstance(name, Simulator):
            return name
        catalog = self._catalog_now()
        if name in catalog.conflicts:
            owners = [self._describe_owner(catalog, p) for p in catalog.conflicts[name]]
            raise PluginError(
                f"simulator {name!r} is registered by more than one plugin: "
                f"{' and '.join(owners)}. Uninstall one, or load only one with "
                f"{LOAD_PLUGINS_ENV}=<name>"
            )
        if name not in catalog.simulators:
            known = ", ".join(sorted(catalog.simulators)) or "none"
            close = closest_name(name, catalog.simulators, cutoff=0.75)
            hint = f" (did you mean {close!r}?)" if close else ""
            if isinstance(name, str) and os.path.isfile(name):
                hint = (
                    " (a file: the data? The simulator comes first on the command "
                    "line, `sbi-plugins fit ddm data.csv`, and second in Python, "
                    "`fit(data, 'ddm')`)"
                )
            raise PluginError(
                f"unknown simulator {name!r}{hint}; installed simulators: {known}. "
                "`sbi-plugins list` shows plugins and loading failures"
            )
        return catalog.simulators[name]

    @staticmethod
    def _describe_owner(catalog: _Catalog, plugin_name: str) -> str:
        info = catalog.plugins.get(plugin_name)
        if info and info.distribution:
            return f"distribution {info.distribution} {info.version} ({plugin_name})"
        return f"plugin {plugin_name!r}"

    def prior_family(self, name: str) -> PriorFamily:
        catalog = self._catalog_now()
        families = catalog.priors
        if name in catalog.prior_conflicts:
            owners = [
                self._describe_owner(catalog, p) for p in catalog.prior_conflicts[name]
            ]
            raise PluginError(
                f"prior family {name!r} is registered by more than one plugin: "
                f"{' and '.join(owners)}. Uninstall one, or load only one with "
                f"{LOAD_PLUGINS_ENV}=<name>"
            )
        if name not in families:
            raise PluginError(
                f"unknown population prior family {name!r}; registered: "
                f"{', '.join(sorted(families))}"
            )
        return families[name]

    def estimator_artifacts(self, simulator: str) -> list[EstimatorArtifact]:
        """The verified estimator files plugins ship for `simulator`."""
        self.verify_estimators(simulator)
        return list(self._catalog_now().estimators.get(simulator, []))

    def refused_estimators(self, simulator: str) -> list[tuple[EstimatorArtifact, str]]:
        """Estimator files registered for `simulator` that failed verification, each
        with the reason (`sbi-plugins check` reports them)."""
        self.verify_estimators(simulator)
        return [r for r in self._catalog_now().refused if r[0].simulator == simulator]

    def owner(self, simulator: str) -> PluginInfo | None:
        """The plugin that registered `simulator`, if one did."""
        catalog = self._catalog_now()
        name = catalog.simulator_owner.get(simulator)
        return catalog.plugins.get(name) if name else None


def _normalize(name: str | None) -> str | None:
    """Plugin and distribution names compared as packaging does (PEP 503)."""
    if name is None:
        return None
    return name.lower().replace("_", "-").replace(".", "-")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


_registry = Registry()


def get_registry() -> Registry:
    return _registry


@contextlib.contextmanager
def isolated_registry(*, load_entry_points: bool = False) -> Iterator[Registry]:
    """Swap in a fresh registry (only built-ins unless asked) for a test."""
    global _registry
    previous, _registry = _registry, Registry(load_entry_points=load_entry_points)
    try:
        yield _registry
    finally:
        _registry = previous


def list_plugins() -> list[PluginInfo]:
    """Every plugin with its distribution, what it registers and why it failed."""
    return get_registry().plugins()


def get_simulator(name: str | Simulator) -> Simulator:
    return get_registry().simulator(name)


def closest_name(name: str, names: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The name the user likely meant: the same in another case ('DDM' for 'ddm';
    names stay case-sensitive, ssm-simulators' spelling), else difflib's nearest.
    Offered in the error, never taken."""
    names = list(names)
    same = [n for n in names if n.lower() == name.lower()]
    near = same or difflib.get_close_matches(name.lower(), names, n=1, cutoff=cutoff)
    return near[0] if near else None
