"""Train, save, load and find likelihood estimators."""

from sbi_plugins.estimators.artifact import TrainedEstimator, check_matches, load
from sbi_plugins.estimators.resolve import cache_dir, resolve_estimator
from sbi_plugins.estimators.training import train

__all__ = [
    "TrainedEstimator",
    "cache_dir",
    "check_matches",
    "load",
    "resolve_estimator",
    "train",
]
