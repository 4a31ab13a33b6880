"""Score data rows once per unique condition instead of once per row.

In a hierarchical model every row of a group shares the group's parameters, so most
of a learned likelihood's work repeats: a categorical estimator gives every count's
probability from theta alone, and MNLE's flow for a one-dimensional reaction time
takes its spline parameters from (theta, choice) alone. Here the networks run once
per group (and choice); each row then only picks from a table, or pushes its own
value through the splines. The numbers are those of sbi's `log_prob` (the
`Likelihood` checks that on random points before using these paths, and
`sbi_internals.check_sbi_internals` on tiny networks once per process). The
networks' parts come from `sbi_plugins.estimators.sbi_internals`; the spline maths
(nflows' formulas, batched) is ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sbi_plugins.estimators import reduction
from sbi_plugins.estimators.sbi_internals import (
    FlowParts,
    SplineSettings,
    SplineStep,
    first_variable_logits,
    is_mnle,
    mass_net,
    mnle_parts,
    num_variables,
)


def categorical_table(made: torch.nn.Module, theta: Tensor) -> Tensor:
    """log-probabilities of all categories of a one-variable CategoricalMADE,
    shape `(*theta.shape[:-1], K)`."""
    flat = theta.reshape(-1, theta.shape[-1]).float()
    logits = first_variable_logits(made, flat)
    return torch.log_softmax(logits, dim=-1).reshape(*theta.shape[:-1], -1)


def count_log_prob(
    net: torch.nn.Module,
    theta: Tensor,
    group_index: Tensor,
    x: Tensor,
    network: Mapping[str, Any] | None = None,
) -> Tensor:
    """Rows of counts `x[:, 0]` under a CategoricalMassEstimator, per group."""
    table = categorical_table(mass_net(net), theta)
    # one flat index per row: a single gather (and scatter-add backwards)
    cell = group_index * table.shape[-1] + x[..., 0].long()
    return (
        table.flatten(-2)
        .index_select(-1, cell.reshape(-1))
        .reshape(*table.shape[:-2], *cell.shape)
    )


STACKED = "stacked_layers"


def mnle_path_unsupported(net: torch.nn.Module) -> str | None:
    """Why `mnle_log_prob` cannot score this estimator, or None if it can. Only a
    one-dimensional continuous part has context-only spline parameters, and the
    splines must share their settings to have their tables built together."""
    if not is_mnle(net):
        return f"a {type(net).__name__} is not an MNLE"
    parts = mnle_parts(net)
    if parts.flow is None:
        return "its continuous part is not an nflows flow"
    if num_variables(parts.choice_net) != 1:
        return "it has more than one choice variable"
    if net.input_shape != torch.Size([2]):
        return f"its input has shape {tuple(net.input_shape)}, not (value, choice)"
    if not parts.flow.standard_normal_base:
        return "its flow's base distribution is not a standard normal"
    splines = parts.flow.splines
    if not splines:
        return "its flow has no rational-quadratic splines"
    if len({s.settings for s in splines}) != 1:  # one table build serves them all
        return "its splines differ in their settings"
    if splines[0].settings.context_width is None:
        return "its spline context net does not say its width"
    return None


def supports_mnle(net: torch.nn.Module) -> bool:
    return mnle_path_unsupported(net) is None


def _stacked_layers(flow: FlowParts) -> list[tuple[Tensor, Tensor]] | None:
    """The splines' context networks (Linear/ReLU stacks of equal shapes) as one
    batched network: weights `(T, in, out)`, biases `(T, 1, out)`. One batched
    matmul per layer replaces one per layer and spline. None where the networks
    are not plain Linear/ReLU stacks of one shape. Kept with the flow's parts."""
    if STACKED in flow.derived:
        return flow.derived[STACKED]
    layers = None
    nets = [s.predictor for s in flow.splines]
    if all(n is not None for n in nets):
        shapes = {tuple(type(m).__name__ for m in n) for n in nets}
        kinds = next(iter(shapes)) if len(shapes) == 1 else ()
        if kinds and set(kinds) <= {"Linear", "ReLU"} and kinds[-1] == "Linear":
            linear = [i for i, k in enumerate(kinds) if k == "Linear"]
            if all(kinds[i + 1] == "ReLU" for i in linear[:-1]):
                layers = [
                    (
                        torch.stack([n[i].weight.detach().T for n in nets]),
                        torch.stack([n[i].bias.detach()[None] for n in nets]),
                    )
                    for i in linear
                ]
    flow.derived[STACKED] = layers
    return layers


def _all_spline_params(flow: FlowParts, context: Tensor) -> Tensor:
    """Every spline's unnormalized parameters, `(T * cells, 3K - 1)`, in one pass
    where the networks allow (see `_stacked_layers`), else one by one."""
    splines = flow.splines
    layers = _stacked_layers(flow)
    if layers is None:
        return torch.cat([s.unnormalized_parameters(context) for s in splines])
    hidden = context.expand(len(splines), *context.shape)
    for i, (weight, bias) in enumerate(layers):
        hidden = torch.baddbmm(bias, hidden, weight)
        if i < len(layers) - 1:
            hidden = torch.relu(hidden)
    return hidden.reshape(-1, hidden.shape[-1])


def _spline_tables(settings: SplineSettings, params: Tensor) -> Tensor:
    """Knots of one linear-tailed rational-quadratic spline per row of `params`
    (the context network's output), as nflows builds them, stacked as
    `(rows, 4, K+1)`: cumulative widths, cumulative heights, knot derivatives and
    bin slopes (the last padded by one). One table lets each row fetch everything
    it needs with one index and one gather. All splines of a flow share the
    settings read here, so their tables are built together."""
    bins = settings.bins
    scale = math.sqrt(settings.context_width)
    widths, heights = params[:, :bins] / scale, params[:, bins : 2 * bins] / scale
    edge = math.log(math.exp(1 - settings.min_slope) - 1)
    slopes = torch.nn.functional.pad(params[:, 2 * bins :], (1, 1), value=edge)
    bound = settings.bound

    def knots(unnormalized: Tensor, minimum: float) -> Tensor:
        size = minimum + (1 - minimum * bins) * torch.softmax(unnormalized, dim=-1)
        cum = torch.nn.functional.pad(torch.cumsum(size, dim=-1), (1, 0))
        cum = 2 * bound * cum - bound
        return torch.cat(
            [cum[:, :1] * 0 - bound, cum[:, 1:-1], cum[:, -1:] * 0 + bound], 1
        )

    cumwidths = knots(widths, settings.min_width)
    cumheights = knots(heights, settings.min_height)
    derivatives = settings.min_slope + torch.nn.functional.softplus(slopes)
    delta = (cumheights[:, 1:] - cumheights[:, :-1]) / (
        cumwidths[:, 1:] - cumwidths[:, :-1]
    )
    delta = torch.nn.functional.pad(delta, (0, 1), value=1.0)
    return torch.stack([cumwidths, cumheights, derivatives, delta], dim=1)


def _spline_forward(
    table: Tensor, cell: Tensor, z: Tensor, bound: float
) -> tuple[Tensor, Tensor]:
    """Push values `z` (rows) through the spline of their `cell`: nflows'
    formula, with `where` in place of boolean masks (no data-dependent shapes).
    Finding the bin needs no gradient; the knots a row uses are then taken from
    the flat table, so the backward pass scatters 8 numbers per row, not 36."""
    width = table.shape[-1]
    knots = table[:, 0].detach().index_select(0, cell)
    inside = (z >= -bound) & (z <= bound)
    zc = z.clamp(-bound, bound)
    last = knots[:, -1:] + 1e-6
    index = (zc[:, None] >= torch.cat([knots[:, :-1], last], 1)).sum(1) - 1
    index = index.clamp(0, width - 2)
    start = cell * (4 * width) + index
    offsets = torch.tensor(
        [0, 1, width, width + 1, 2 * width, 2 * width + 1, 3 * width]
    )
    x0, x1, y0, y1, d0, d1, slope = (
        table.reshape(-1).take(start[:, None] + offsets).unbind(1)
    )
    width_, height = x1 - x0, y1 - y0
    t = (zc - x0) / width_
    t1 = t * (1 - t)
    denominator = slope + (d0 + d1 - 2 * slope) * t1
    out = y0 + height * (slope * t * t + d0 * t1) / denominator
    numerator = slope**2 * (d1 * t * t + 2 * slope * t1 + d0 * (1 - t) ** 2)
    logdet = numerator.log() - 2 * denominator.log()
    return torch.where(inside, out, z), torch.where(inside, logdet, torch.zeros_like(z))


def mnle_log_prob(
    net: torch.nn.Module,
    theta: Tensor,
    group_index: Tensor,
    x: Tensor,
    network: Mapping[str, Any] | None = None,
    tails: int = 0,
) -> Tensor:
    """Rows `(value, choice index)` under sbi's MixedDensityEstimator, theta of
    shape `(..., groups, P)`; returns `(..., rows)`. The networks see one context
    per (draw, group, choice) cell; each row only evaluates its cell's splines.
    The value is shifted and scaled as the network's config says (see
    `sbi_plugins.estimators.reduction`), with probability zero where its excess is
    not positive.

    The last `tails` rows get log P(their choice, and a value above theirs)
    instead of the density (an omission at a deadline), in the same pass through
    the networks. A one-dimensional flow is a monotone map to its standard-normal
    base, so that is the normal's upper tail at the mapped value, exactly, with
    its digits kept for small probabilities (the `Likelihood` checks the
    direction against the integrated density before using it); a value at or
    below its shift has all the choice's mass above it."""
    z, logdet, choice, valid = _mnle_rows(net, theta, group_index, x, network)
    density = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) + logdet + choice
    if valid is not None:
        density = torch.where(valid, density, torch.full_like(density, -math.inf))
    if not tails:
        return density
    tail = torch.special.log_ndtr(-z[..., -tails:]) + choice[..., -tails:]
    if valid is not None:
        tail = torch.where(valid[..., -tails:], tail, choice[..., -tails:])
    return torch.cat([density[..., :-tails], tail], dim=-1)


def _mnle_rows(
    net: torch.nn.Module,
    theta: Tensor,
    group_index: Tensor,
    x: Tensor,
    network: Mapping[str, Any] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Per row `(..., rows)`: the value mapped to the flow's base, the log of that
    map's derivative (the flow's and the reduction's), the choice's
    log-probability, and which rows have a positive excess (None: all)."""
    batch, groups = theta.shape[:-2], theta.shape[-2]
    flat = theta.reshape(-1, theta.shape[-1]).float()
    n = flat.shape[0]
    parts = mnle_parts(net)
    flow = parts.flow
    logits = first_variable_logits(parts.choice_net, flat)
    choices = logits.shape[-1]  # a static shape, where the buffer would be data
    choice_table = torch.log_softmax(logits, dim=-1).reshape(-1)  # (n * C,)

    embedded = parts.theta_embedding(flat)
    codes = torch.arange(choices, dtype=embedded.dtype)
    combined = torch.cat(
        [
            codes[None, :, None].expand(n, choices, 1),
            embedded[:, None, :].expand(n, choices, embedded.shape[-1]),
        ],
        dim=-1,
    ).reshape(n * choices, -1)
    context = flow.context_net(combined)  # one row per (draw, group, choice)

    rows = int(group_index.shape[0])
    cell = group_index * choices + x[:, 1].long()  # (rows,) within one draw
    draw = torch.arange(n // groups).reshape(*batch, 1) if batch else torch.zeros(1)
    cell = (draw.long() * groups * choices + cell).reshape(-1)  # (draws * rows,)
    value, valid, log_scale = reduction.network_value(
        network or {}, theta, x[:, 0], 0, group_index
    )
    value = value.expand(*batch, rows).reshape(-1).float()
    if log_scale is not None:
        log_scale = log_scale.expand(*batch, rows).reshape(-1).float()
    jacobian = None  # log |d z / d value| beyond the flow's own
    if parts.log_value:
        # z = log((x - t) / s): the shift and scale's Jacobian and the log's
        # together are 1 / (x - t), whatever the scale
        log_value = value.log()
        z = log_value if log_scale is None else log_value - log_scale
        jacobian = -log_value
    elif log_scale is not None:
        z, jacobian = value * torch.exp(-log_scale), -log_scale
    else:
        z = value
    logdet = torch.zeros_like(z)
    tables = _spline_tables(flow.splines[0].settings, _all_spline_params(flow, context))
    tables = tables.reshape(len(flow.splines), -1, *tables.shape[1:])
    for transform in flow.steps:
        if isinstance(transform, SplineStep):
            table = tables[transform.index]
            bound = transform.settings.bound
            z, step = _spline_forward(table, cell, z, bound)
        else:
            out, step = transform(z[:, None])
            z = out[:, 0]
        logdet = logdet + step
    if jacobian is not None:
        logdet = logdet + jacobian
    return (
        z.reshape(*batch, rows),
        logdet.reshape(*batch, rows),
        choice_table[cell].reshape(*batch, rows),
        valid,
    )
