"""Errors a user can act on. The CLI prints their message and exits 2, no traceback."""


class SbiPluginsError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ContractError(SbiPluginsError):
    """A plugin object breaks the plugin contract."""


class PluginError(SbiPluginsError):
    """A plugin could not be loaded, or two plugins clash."""


class DataError(SbiPluginsError, ValueError):
    """The data do not fit the simulator: missing columns, NaN, out of support."""


class EstimatorError(SbiPluginsError):
    """An estimator file is unreadable, tampered with or made for another simulator."""


class DomainWarning(UserWarning):
    """Posterior mass piles up against the estimator's training domain."""
