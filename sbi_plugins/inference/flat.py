"""The model's unconstrained sites as one flat vector, the one site NUTS sees.

Pyro's NUTS loops over sample sites in every leapfrog step (momentum, kinetic
energy, gradients, the U-turn test: a few small tensor operations per site each).
With the dozen sites of a hierarchical model that bookkeeping costs about 0.74 ms
per step, against 0.22 ms for the same dimensions as one site
(`benchmarks/nuts_overhead.py`): as much as a compiled DDM potential itself. So the
sampler moves one vector, and the potential unflattens it into the model's sites.
The dynamics are the same: a dense mass matrix spans every site either way, a
diagonal one is per coordinate either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

FLAT = "_flat"
"""The one site NUTS samples."""

SitePotential = Callable[[Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class FlatLayout:
    """Where each site (sorted by name, as Pyro orders a dense mass matrix) sits
    in the flat vector, and its shape."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, values: Mapping[str, Tensor]) -> FlatLayout:
        names = tuple(sorted(values))
        return cls(names, tuple(tuple(values[n].shape) for n in names))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    def flatten(self, values: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([values[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Sites from `flat` of shape `(..., dims)`: views, batch dimensions kept."""
        pieces = torch.split(flat, self.sizes, dim=-1)
        return {
            name: piece.reshape((*flat.shape[:-1], *shape))
            for name, shape, piece in zip(self.names, self.shapes, pieces, strict=True)
        }


def vector_potential(
    potential: SitePotential, layout: FlatLayout
) -> Callable[[Tensor], Tensor]:
    """`potential` of the sites as a function of their flat vector; one that
    takes the vector itself (the compiled potential) is called directly."""
    direct = getattr(potential, "flat", None)
    if direct is not None and getattr(potential, "layout", None) == layout:
        return direct
    return lambda flat: potential(layout.unflatten(flat))
