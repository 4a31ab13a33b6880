"""The model's potential energy, derived from its one statement.

NUTS needs the potential (minus the log joint density in unconstrained space) and
its gradient at every leapfrog step. Pyro gets it by tracing the model; under its
JIT that is hundreds of tiny tensor operations forward and backward, and their
per-call overhead (a few microseconds each), not arithmetic, made up most of a DDM
step. `torch.compile` fuses such work into a few C++ loops, but only from one clean
graph, which Pyro's tracing (messengers, plates, trace bookkeeping) does not give.
So the potential here runs the model's own statement (`HierarchicalModel.body`)
with `LogJoint` sites instead of Pyro's: the same distributions, summed the same
way, with the transforms Pyro's own set-up chose. Nothing about the model is written
twice; `sbi_plugins.inference.compile` still checks it against Pyro's potential at
run time before it is sampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.distributions.transforms import Transform

if TYPE_CHECKING:
    from sbi_plugins.model.model import HierarchicalModel


class Potential:
    """`unconstrained values -> -log joint`, Pyro's potential of `model` given
    `model_kwargs`, with `transforms` as Pyro's `initialize_model` made them
    (constrained to unconstrained, per site)."""

    def __init__(
        self,
        model: HierarchicalModel,
        transforms: Mapping[str, Transform],
        model_kwargs: Mapping[str, Any],
    ) -> None:
        self.model, self.transforms = model, dict(transforms)
        self.model_kwargs = dict(model_kwargs)

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        values = {k: self.transforms[k].inv(v) for k, v in params.items()}
        log_joint = self.model.log_joint(values, **self.model_kwargs)
        for name, transform in self.transforms.items():
            log_joint = (
                log_joint
                - transform.log_abs_det_jacobian(values[name], params[name]).sum()
            )
        return -log_joint
