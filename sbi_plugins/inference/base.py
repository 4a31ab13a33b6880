"""One interface for inference methods: a method turns the model and its data into
draws of every site plus its own sampler statistics.

NUTS (`sbi_plugins.inference.nuts_method`, the default) and variational inference
(`sbi_plugins.inference.variational`, Pyro SVI with a multivariate-normal guide)
implement `run` and are registered in `METHODS`; `fit(method=...)` picks one by
name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sbi_plugins.errors import SbiPluginsError

if TYPE_CHECKING:
    from sbi_plugins.data import PreparedData
    from sbi_plugins.model.model import HierarchicalModel


MASS_MATRICES = ("auto", "diagonal", "dense")
"""NUTS's mass matrix. Dense (Pyro's `full_mass`) adapts the whole covariance in
warm-up, where diagonal adapts the variances only. It pays where a pooled
parameter moves with many groups' values, which no diagonal can follow: on
`full_ddm` (10 x 100, centered, 27 dimensions), whose pooled `sv` correlates 0.86
with the subjects' mean `v`, 4 times the effective draws per leapfrog step, the
same steps per draw; on centered `angle` and `weibull` fits 2.2 and 1.5 times the
ESS per second (docs/ssm.md); on the DDM (10 x 100, v and a by subject) 1.16-1.6
times the ESS per leapfrog step. "auto" (the default) takes it where every
population is centered and the warm-up's last window can estimate it
(`sbi_plugins.inference.mass.dense_pays`)."""


@dataclass(frozen=True)
class Settings:
    """What the user asked of the inference, whatever the method."""

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 0
    cores: int | None = None
    progress: bool = True
    target_accept: float = 0.8
    compile: bool | None = None
    mass_matrix: str = "auto"
    """NUTS's mass matrix: "auto" (`dense_pays`), "diagonal" (Stan's and PyMC's
    default) or "dense" (`MASS_MATRICES`)."""


@dataclass
class Draws:
    """A method's result: constrained draws of every latent site, `(chain, draw,
    ...)`; its statistics per draw (ArviZ's `sample_stats`); attrs naming the
    method and how it ran."""

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)


class InferenceMethod(Protocol):
    """What `fit` asks of a method: a name (the `method=` it answers to) and a
    `run` that turns the model and its data into `Draws`. The draws are of the
    model's own sites, so InferenceData, the log-likelihood and the predictives
    are built the same way whatever the method."""

    name: str

    def run(
        self,
        model: HierarchicalModel,
        model_kwargs: Mapping[str, Any],
        data: PreparedData,
        settings: Settings,
    ) -> Draws:
        """Draws from the posterior of `model` given `model_kwargs`' data."""


METHODS: dict[str, str] = {
    "nuts": "sbi_plugins.inference.nuts_method:Nuts",
    "vi": "sbi_plugins.inference.variational:Variational",
}
"""Method name -> 'module:class', imported when asked for."""


def get_method(name: str) -> InferenceMethod:
    """The inference method called `name`; an error listing the methods else."""
    if name not in METHODS:
        raise SbiPluginsError(
            f"method {name!r} is not an inference method; use one of "
            f"{', '.join(map(repr, METHODS))}"
        )
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def stack_chains(per_chain: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-chain dicts of arrays -> one dict of `(chain, ...)` arrays."""
    return {k: np.stack([chain[k] for chain in per_chain]) for k in per_chain[0]}
