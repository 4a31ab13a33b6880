"""Which estimator a fit uses: explicit, shipped by a plugin, cached, or trained."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

from sbi_plugins.contract import EstimatorRecipe, Simulator
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import artifact
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.plugin.registry import get_registry

CACHE_ENV = "SBI_PLUGINS_CACHE_DIR"


def cache_dir() -> Path:
    """`$SBI_PLUGINS_CACHE_DIR`, else `~/.cache/sbi-plugins`."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "sbi-plugins"


def cache_path(simulator: Simulator, recipe: EstimatorRecipe | None = None) -> Path:
    """One file per simulator version, training domain and recipe (default: the
    simulator's), keyed on every recipe field: an estimator trained with other
    options (`train --num-simulations 5000`) gets its own file and never stands in
    for the recipe's own. The seed is left out: it draws another estimator of the
    same recipe, not a different one."""
    recipe = recipe or simulator.recipe
    key = json.dumps(
        {
            "domain": artifact.domain_of(simulator),
            "observables": simulator.observable_names,
            "recipe": repr(recipe),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    label = recipe.name + _overrides_label(simulator.recipe, recipe)
    return cache_dir() / f"{simulator.name}-{simulator.version}-{label}-{digest}.pt"


def _overrides_label(default: EstimatorRecipe, recipe: EstimatorRecipe) -> str:
    """`+num_simulations5000` and the like: which fields differ from the
    simulator's recipe, readable in a listing of the cache (the digest decides)."""
    parts = []
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if f.name == "name" or value == getattr(default, f.name):
            continue
        shown = "" if isinstance(value, Mapping) else re.sub(r"[^\w.]", "", str(value))
        parts.append(f"+{f.name}{shown}")
    return "".join(parts)[:80]


def shipped_estimator(simulator: Simulator) -> TrainedEstimator | None:
    """The first artifact a plugin registered for this simulator that loads and
    matches; a broken one is skipped with a warning naming the file."""
    for art in get_registry().estimator_artifacts(simulator.name):
        try:
            return artifact.load(art.path, simulator, expected_sha256=art.sha256)
        except EstimatorError as exc:
            warnings.warn(f"skipped shipped estimator: {exc}", stacklevel=3)
    return None


def resolve_estimator(
    simulator: Simulator,
    estimator: TrainedEstimator | str | Path | None = None,
    *,
    progress: bool = True,
    seed: int = 0,
) -> TrainedEstimator:
    """An explicit estimator (object or file), then one a plugin ships, then the
    cache, then train with the simulator's recipe and cache the result."""
    if isinstance(estimator, TrainedEstimator):
        artifact.check_matches(estimator, simulator)
        return estimator
    if estimator is not None:
        return artifact.load(estimator, simulator)
    shipped = shipped_estimator(simulator)
    if shipped is not None:
        return shipped
    path = cache_path(simulator)
    if path.exists():
        try:
            return artifact.load(path, simulator)
        except EstimatorError as exc:
            warnings.warn(f"ignoring cached estimator: {exc}; retraining", stacklevel=2)
    from sbi_plugins.estimators.training import train

    trained = train(simulator, seed=seed, progress=progress)
    trained.save(path, overwrite=True)
    trained.source = str(path)
    return trained
