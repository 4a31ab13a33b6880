"""Score data rows once per unique condition instead of once per row.

In a hierarchical model every row of a group shares the group's parameters, so most
of a learned likelihood's work repeats: a categorical estimator gives every count's
probability from theta alone, and MNLE's flow for a one-dimensional reaction time
takes its spline parameters from (theta, choice) alone. Here the networks run once
per group (and choice); each row then only picks from a table, or pushes its own
value through the splines. The numbers are those of sbi's `log_prob` (the
`Likelihood` checks that on random points before using these paths).
"""

from __future__ import annotations

import math

import torch
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from torch import Tensor


def categorical_table(made: torch.nn.Module, theta: Tensor) -> Tensor:
    """log-probabilities of all categories of a one-variable CategoricalMADE,
    shape `(*theta.shape[:-1], K)`. The first variable's logits depend on the
    condition only, so a zero input gives them all."""
    flat = theta.reshape(-1, theta.shape[-1]).float()
    logits = made.forward(torch.zeros(len(flat), 1), condition=flat)
    return torch.log_softmax(logits, dim=-1).reshape(*theta.shape[:-1], -1)


def count_log_prob(
    net: torch.nn.Module,
    theta: Tensor,
    group_index: Tensor,
    x: Tensor,
    shifts: list | None = None,
) -> Tensor:
    """Rows of counts `x[:, 0]` under a CategoricalMassEstimator, per group."""
    table = categorical_table(net.net, theta)
    rows = table[..., group_index, :]
    counts = x[..., 0].long().expand(rows.shape[:-1])
    return rows.gather(-1, counts[..., None])[..., 0]


def supports_mnle(net: torch.nn.Module) -> bool:
    """Only a one-dimensional continuous part has context-only spline parameters."""
    flow = getattr(getattr(net, "continuous_net", None), "net", None)
    if flow is None or getattr(net.discrete_net.net, "num_variables", 0) != 1:
        return False
    if net.input_shape != torch.Size([2]):
        return False
    return any(
        isinstance(t, PiecewiseRationalQuadraticCouplingTransform)
        for t in flow._transform._transforms
    )


def _spline_tables(
    transform: PiecewiseRationalQuadraticCouplingTransform, context: Tensor
) -> Tensor:
    """Knots of one linear-tailed rational-quadratic spline per context row, as
    nflows builds them, stacked as `(cells, 4, K+1)`: cumulative widths, cumulative
    heights, knot derivatives and bin slopes (the last padded by one). One table
    lets each row fetch everything it needs with one index and one gather."""
    params = transform.transform_net(context[:, :0], context)
    bins = transform.num_bins
    scale = math.sqrt(transform.transform_net.hidden_features)
    widths, heights = params[:, :bins] / scale, params[:, bins : 2 * bins] / scale
    edge = math.log(math.exp(1 - transform.min_derivative) - 1)
    slopes = torch.nn.functional.pad(params[:, 2 * bins :], (1, 1), value=edge)
    bound = transform.tail_bound

    def knots(unnormalized: Tensor, minimum: float) -> Tensor:
        size = minimum + (1 - minimum * bins) * torch.softmax(unnormalized, dim=-1)
        cum = torch.nn.functional.pad(torch.cumsum(size, dim=-1), (1, 0))
        cum = 2 * bound * cum - bound
        return torch.cat(
            [cum[:, :1] * 0 - bound, cum[:, 1:-1], cum[:, -1:] * 0 + bound], 1
        )

    cumwidths = knots(widths, transform.min_bin_width)
    cumheights = knots(heights, transform.min_bin_height)
    derivatives = transform.min_derivative + torch.nn.functional.softplus(slopes)
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
    shifts: list | None = None,
) -> Tensor:
    """Rows `(value, choice index)` under sbi's MixedDensityEstimator, theta of
    shape `(..., groups, P)`; returns `(..., rows)`. The networks see one context
    per (draw, group, choice) cell; each row only evaluates its cell's splines.
    With a shift `[[0, k]]` the value is its excess over parameter k of its group
    (zero probability where that is not positive)."""
    batch, groups = theta.shape[:-2], theta.shape[-2]
    flat = theta.reshape(-1, theta.shape[-1]).float()
    n = flat.shape[0]
    choices = int(net.discrete_net.net.num_categories_per_var[0])

    logits = net.discrete_net.net.forward(torch.zeros(n, 1), condition=flat)
    choice_table = torch.log_softmax(logits, dim=-1).reshape(-1)  # (n * C,)

    embedded = net.condition_embedding(flat)
    codes = torch.arange(choices, dtype=embedded.dtype)
    combined = torch.cat(
        [
            codes[None, :, None].expand(n, choices, 1),
            embedded[:, None, :].expand(n, choices, embedded.shape[-1]),
        ],
        dim=-1,
    ).reshape(n * choices, -1)
    flow = net.continuous_net.net
    context = flow._embedding_net(combined)  # one row per (draw, group, choice)

    rows = int(group_index.shape[0])
    cell = group_index * choices + x[:, 1].long()  # (rows,) within one draw
    draw = torch.arange(n // groups).reshape(*batch, 1) if batch else torch.zeros(1)
    cell = (draw.long() * groups * choices + cell).reshape(-1)  # (draws * rows,)
    value = x[:, 0].expand(*batch, rows)
    valid = torch.ones_like(value, dtype=torch.bool)
    for _, k in shifts or []:
        value = value - theta[..., group_index, k]
        valid = value > 0
        value = value.clamp_min(1e-9)
    value = value.reshape(-1).float()
    z = value.log() if net.log_transform_input else value
    logdet = torch.zeros_like(z)
    for transform in flow._transform._transforms:
        if isinstance(transform, PiecewiseRationalQuadraticCouplingTransform):
            table = _spline_tables(transform, context)
            z, step = _spline_forward(table, cell, z, transform.tail_bound)
        else:
            out, step = transform(z[:, None])
            z = out[:, 0]
        logdet = logdet + step
    base = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    total = base + logdet + choice_table[cell]
    if net.log_transform_input:
        total = total - value.log()
    total = total.reshape(*batch, rows)
    return torch.where(valid, total, torch.full_like(total, -math.inf))
