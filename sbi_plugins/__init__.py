"""sbi-plugins: simulators as plugins, learned likelihoods in hierarchical Pyro models,
answers as ArviZ InferenceData."""

from sbi_plugins.contract import (
    CONTRACT_VERSION,
    EstimatorArtifact,
    EstimatorRecipe,
    Observable,
    Parameter,
    PopulationPrior,
    PriorFamily,
    Simulator,
)
from sbi_plugins.errors import (
    ContractError,
    DataError,
    DomainWarning,
    EstimatorError,
    PluginError,
    SbiPluginsError,
)
from sbi_plugins.plugin.hookspecs import hookimpl
from sbi_plugins.plugin.registry import get_simulator, list_plugins

__version__ = "0.1.0"

_API = (
    "fit",
    "compare",
    "train",
    "likelihood",
    "load_estimator",
    "fit_many",
    "collect_fits",
    "population_values",
)


def __getattr__(name: str):
    """The sampling API imports Pyro, sbi and ArviZ; load it on first use so that
    `sbi-plugins list` and plugin imports stay quick."""
    if name in _API:
        from sbi_plugins import api

        return getattr(api, name)
    raise AttributeError(f"module 'sbi_plugins' has no attribute {name!r}")


__all__ = [
    "CONTRACT_VERSION",
    "ContractError",
    "DataError",
    "DomainWarning",
    "EstimatorArtifact",
    "EstimatorError",
    "EstimatorRecipe",
    "Observable",
    "Parameter",
    "PluginError",
    "PopulationPrior",
    "PriorFamily",
    "SbiPluginsError",
    "Simulator",
    "collect_fits",
    "compare",
    "fit",
    "fit_many",
    "get_simulator",
    "hookimpl",
    "likelihood",
    "list_plugins",
    "load_estimator",
    "population_values",
    "train",
]
