"""Known symmetries of a simulator, applied exactly so its network learns less.

A plugin may declare in its contract that an observable exceeds a parameter
(`Observable.shift`) or a sum of them (`Observable.exceeds`), that the excess
scales with a product of parameters (`Observable.scale`), and that what remains
depends on the parameters only through a few products of them
(`Simulator.network_condition`). The DDM's first-passage times obey all three:
`(rt - t) / a**2` has a distribution set by `v * a` and `z` alone. Training and
scoring then apply the same transformation, the density changes by its Jacobian,
and the network models a lower-dimensional family: less to learn, so a smaller
error for the same simulations.

Products are stored as `[[parameter index, exponent], ...]` so they travel in an
artifact's JSON metadata and rebuild without the plugin's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sbi_plugins.contract import Observable

Monomial = list[list[float]]


def monomial(spec: Mapping[str, float], names: Sequence[str]) -> Monomial:
    """`{"v": 1, "a": 1}` as `[[index of v, 1.0], [index of a, 1.0]]`."""
    return [[names.index(name), float(power)] for name, power in spec.items()]


def evaluate(product: Monomial, theta: Tensor) -> Tensor:
    """The product of `theta[..., k] ** power`; no zero powers are stored, so a
    parameter at zero never meets a `0 ** -1` in the gradient."""
    out = None
    for k, power in product:
        factor = theta[..., int(k)]
        if power != 1:
            factor = factor**power
        out = factor if out is None else out * factor
    return out if out is not None else torch.ones_like(theta[..., 0])


Floor = int | list[list[float]]


def floor_spec(coefficients: Mapping[str, float], names: Sequence[str]) -> Floor:
    """What a column exceeds: one parameter's index (a shift, `{"t": 1}`), as
    artifacts have always stored it, else `[[index, coefficient], ...]`."""
    if len(coefficients) == 1 and next(iter(coefficients.values())) == 1.0:
        return names.index(next(iter(coefficients)))
    return [[names.index(name), float(c)] for name, c in coefficients.items()]


def observable_floor(observable: Observable, names: Sequence[str]) -> Floor | None:
    """`floor_spec` of what an `Observable` exceeds (`Observable.floor`), or None."""
    floor = observable.floor()
    return None if floor is None else floor_spec(floor, names)


def floor_value(spec: Floor, theta: Tensor) -> Tensor:
    """The floor per row of `theta`: the parameter, or the sum of coefficients
    times parameters."""
    if isinstance(spec, int | float):
        return theta[..., int(spec)]
    return sum(c * theta[..., int(k)] for k, c in spec)


def floor_text(spec: Floor, names: Sequence[str]) -> str:
    """`t`, or `(t - st)` for a sum."""
    if isinstance(spec, int | float):
        return names[int(spec)]
    terms = [
        ("- " if c < 0 else "+ ")
        + ("" if abs(c) == 1 else f"{abs(c):g} ")
        + names[int(k)]
        for k, c in spec
    ]
    return "(" + " ".join(terms).removeprefix("+ ") + ")"


def is_positive(product: Monomial, lower: Sequence[float]) -> bool:
    """Positive over the training box: every factor's parameter is."""
    return all(lower[int(k)] > 0 for k, _ in product)


class NetworkCondition(nn.Module):
    """The parameter products the network is conditioned on, as its first layer, so
    every caller passes the simulator's own parameters."""

    def __init__(self, products: list[Monomial]) -> None:
        super().__init__()
        self.products = [[[int(k), float(p)] for k, p in m] for m in products]

    def forward(self, theta: Tensor) -> Tensor:
        return torch.stack([evaluate(m, theta) for m in self.products], dim=-1)


def transform_values(
    config: Mapping[str, Any], theta: Tensor, x: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """What the network sees of rows `x` under row-aligned `theta`: each shifted
    column as its excess over its parameter, each scaled column divided by its
    scale. Returns the new rows, which rows have a positive excess (the others have
    probability zero), and the log-Jacobian to add to the network's log-density."""
    valid = torch.ones(x.shape[:-1], dtype=torch.bool)
    log_jacobian = torch.zeros(x.shape[:-1], dtype=theta.dtype)
    changed = {j for j, _ in config.get("shift", []) + config.get("scale", [])}
    if not changed:
        return x, valid, log_jacobian
    columns = list(x.to(theta.dtype).unbind(-1))
    for j in changed:
        value, positive, log_scale = network_value(config, theta, columns[j], j)
        if positive is not None:
            valid = valid & positive
        if log_scale is not None:
            value = value * torch.exp(-log_scale)
            log_jacobian = log_jacobian - log_scale
        columns[j] = value
    return torch.stack(torch.broadcast_tensors(*columns), dim=-1), valid, log_jacobian


def network_value(
    config: Mapping[str, Any],
    theta: Tensor,
    value: Tensor,
    column: int,
    group_index: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One column as the per-group scoring path needs it: the value's excess over
    its shift parameter (clamped positive), which rows have a positive excess (None
    without a shift), and the log of its scale per row (None without a scale). The
    scale's log is taken per group, before rows are gathered."""

    def per_row(values: Tensor) -> Tensor:
        return values if group_index is None else values[..., group_index]

    valid = log_scale = None
    for j, spec in config.get("shift", []):
        if j == column:
            value = value.to(theta.dtype) - per_row(floor_value(spec, theta))
            valid = value > 0
            value = value.clamp_min(1e-9)
    for j, product in config.get("scale", []):
        if j == column:
            log_scale = per_row(evaluate(product, theta).log())
    return value, valid, log_scale


def reduce_training_data(
    config: Mapping[str, Any], theta: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Training rows as the network sees them; simulations without a positive
    excess (time-step artefacts) are dropped and counted."""
    if not config.get("shift") and not config.get("scale"):
        return theta, x, 0
    reduced, valid, _ = transform_values(
        config, torch.as_tensor(theta), torch.as_tensor(x, dtype=torch.float64)
    )
    keep = valid.numpy()
    return theta[keep], reduced.numpy()[keep].astype(x.dtype), int((~keep).sum())
