"""The public surface: fit, compare, train, likelihood, list_plugins,
population_values."""

from sbi_plugins.batch import collect_fits, fit_many
from sbi_plugins.estimators.artifact import load as load_estimator
from sbi_plugins.estimators.training import train as _train
from sbi_plugins.likelihoods.distribution import likelihood
from sbi_plugins.plugin.registry import get_simulator, list_plugins
from sbi_plugins.results.comparison import compare
from sbi_plugins.results.natural_scale import population_values
from sbi_plugins.runner import fit

__all__ = [
    "collect_fits",
    "compare",
    "fit",
    "fit_many",
    "likelihood",
    "list_plugins",
    "load_estimator",
    "population_values",
    "train",
]


def train(simulator, **kwargs):
    """Train the simulator's estimator (a name or a Simulator); see
    `sbi_plugins.estimators.train` for the options."""
    return _train(get_simulator(simulator), **kwargs)


train.__doc__ = _train.__doc__
