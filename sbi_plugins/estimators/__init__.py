"""Train, save, load and find likelihood estimators; everything that knows how
sbi's networks are built: the reductions they are trained under (`reduction`), the
per-group scoring of their outputs (`grouped`), and sbi's internals
(`sbi_internals`, the only module that reads them).

Loaded lazily: the registry reads estimator files' metadata (`estimators.format`)
without importing sbi and torch's trainers."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainedEstimator": "sbi_plugins.estimators.artifact",
    "check_matches": "sbi_plugins.estimators.artifact",
    "load": "sbi_plugins.estimators.artifact",
    "cache_dir": "sbi_plugins.estimators.resolve",
    "resolve_estimator": "sbi_plugins.estimators.resolve",
    "train": "sbi_plugins.estimators.training",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sbi_plugins.estimators' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
