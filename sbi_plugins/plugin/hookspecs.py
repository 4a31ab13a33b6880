"""Hook specifications: what a plugin may register, in `llm`'s callback style."""

from collections.abc import Callable

import pluggy

PROJECT_NAME = "sbi_plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_simulators(register: Callable) -> None:
    """Register simulators: call `register(Simulator(...))` once for each."""


@hookspec
def register_priors(register: Callable) -> None:
    """Register population prior families: `register(PriorFamily(...))`."""


@hookspec
def register_estimators(register: Callable) -> None:
    """Register shipped estimator files: `register(EstimatorArtifact(...))`."""
