"""A Laplace start for NUTS: the posterior mode, and the posterior scales there.

Why: with thousands of trials a pooled parameter's posterior (on the link scale) is
a hundred times narrower than a group offset's. NUTS starts with a unit mass matrix,
so until its first adaptation window ends every iteration runs the maximal tree
(1023 gradient evaluations) at a tiny step size. Starting at the mode with the
Laplace approximation's marginal variances as the inverse mass matrix skips that
phase; windowed adaptation then refines both as usual. The model is unchanged.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.adaptation import BlockMassMatrix
from pyro.infer.mcmc.util import initialize_model

from sbi_plugins.inference.flat import FlatLayout

MAX_DIM = 300
"""Above this many unconstrained dimensions the Hessian costs too much: skip."""
STEP = 1e-3
"""Finite-difference step of the Hessian (the neural networks run in float32)."""


class PresetMassMatrix(BlockMassMatrix):
    """A diagonal mass matrix that starts from given per-site inverse masses."""

    def __init__(self, inverse_mass: dict[str, torch.Tensor]):
        super().__init__()
        self._preset = inverse_mass

    def configure(self, mass_matrix_shape, adapt_mass_matrix=True, options={}):  # noqa: B006
        super().configure(mass_matrix_shape, adapt_mass_matrix, options)
        preset = {}
        for sites, shape in mass_matrix_shape.items():
            if len(shape) != 1 or not all(s in self._preset for s in sites):
                continue
            flat = torch.cat([self._preset[s].reshape(-1) for s in sites])
            if flat.numel() == shape[0]:
                preset[sites] = flat.to(**options)
        if preset:
            self.inverse_mass_matrix = preset


Carry = tuple[Callable[..., None], Callable[[dict], dict]]
"""Where a model's own mode is no use: (the same posterior in coordinates that
have one, the map from its constrained values to the model's)."""


def laplace_start(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    chains: int,
    seed: int,
    init: dict[str, torch.Tensor] | None = None,
    through: Carry | None = None,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
    """Per-chain initial values (the mode, jittered by half a posterior sd) in the
    constrained space, and the inverse mass per site. The search for the mode
    starts at `init` (constrained values; see `sbi_plugins.model.support`), or
    where Pyro's default start puts it. `through` finds the mode in other
    coordinates (a centered population's non-centered form: the centered joint
    mode lies at sigma -> 0) and carries it over, with the Laplace covariance
    mapped by the map's Jacobian (the delta method); `init` is then in those
    coordinates. None, with a warning that says why, where
    there is no usable mode: NUTS then starts from `init` with a unit mass matrix
    (the same posterior, a longer first adaptation window). The user's global
    random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        found = _laplace(model, model_kwargs, chains, seed, init, through)
    if isinstance(found, str):
        warnings.warn(
            f"no Laplace start ({found}); NUTS starts from the values built from the "
            "data with a unit mass matrix: the same posterior, a longer first "
            "adaptation window",
            stacklevel=3,
        )
        return None
    return found


def offset_precision(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    sites: list[str],
    init: dict[str, torch.Tensor] | None = None,
) -> dict[str, float] | None:
    """Per standard-normal offset site, the median over its groups of the
    posterior's curvature at the mode: 1 is the prior's alone, so a value of 2
    says each group's data weigh as much as the population. None where there is
    no usable mode (see `laplace_start`)."""
    with torch.random.fork_rng():
        found = _mode_and_hessian(model, model_kwargs, init)
    if isinstance(found, str):
        return None
    layout, _, _, _, hessian = found
    curvature = layout.unflatten(torch.diag(hessian))
    return {
        site: float(curvature[site].median()) for site in sites if site in curvature
    }


def _laplace(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    chains: int,
    seed: int,
    init: dict[str, torch.Tensor] | None,
    through: Carry | None,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | str:
    """The Laplace start, or why there is none."""
    search = model if through is None else through[0]
    found = _mode_and_hessian(search, model_kwargs, init)
    if isinstance(found, str):
        return found
    layout, transforms, potential, mode, hessian = found
    variance, covariance = _laplace_covariance(hessian)
    points = []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(chains):
        for scale in (0.5, 0.1, 0.0):
            jitter = torch.randn(mode.numel(), generator=generator, dtype=torch.float64)
            z = mode + scale * variance.sqrt() * jitter
            if torch.isfinite(potential(z)):
                break
        else:
            z = mode
        points.append(z)

    def constrained(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: transforms[n].inv(v) for n, v in layout.unflatten(flat).items()}

    if through is None:
        starts = [{n: v.detach() for n, v in constrained(z).items()} for z in points]
        return starts, layout.unflatten(variance)
    return _carried(
        model, model_kwargs, through[1], constrained, mode, covariance, points
    )


def _laplace_covariance(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Laplace approximation's marginal variances (clamped to what a start and
    a first mass matrix can use) and its covariance: the Hessian's inverse, or
    per axis where it is not positive definite at the mode."""
    per_axis = 1 / torch.diag(hessian).clamp_min(1e-2)
    try:
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    except RuntimeError:  # not positive definite at the mode: curvature per axis
        covariance = torch.diag(per_axis)
    variance = torch.diag(covariance)
    usable = torch.isfinite(variance) & (variance > 0)
    variance = torch.where(usable, variance, per_axis)
    variance = variance.nan_to_num(1.0).clamp(1e-10, 4.0)
    if not (usable.all() and torch.isfinite(covariance).all()):
        covariance = torch.diag(variance)
    return variance, covariance


def _carried(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    to_model: Callable[[dict], dict],
    constrained: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    mode: torch.Tensor,
    covariance: torch.Tensor,
    points: list[torch.Tensor],
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | str:
    """The starts and inverse mass in `model`'s sites, from the search's mode,
    covariance and jittered starts (unconstrained), by the delta method."""
    at_mode = to_model(constrained(mode))
    try:
        _, _, transforms, _ = initialize_model(
            model,
            model_kwargs=model_kwargs,
            init_strategy=init_to_value(
                values={k: v.detach() for k, v in at_mode.items()}
            ),
        )
    except (RuntimeError, ValueError) as exc:
        return f"Pyro could not set the model up: {str(exc).splitlines()[0]}"
    layout = FlatLayout.of({n: at_mode[n] for n in transforms})

    def unconstrained(flat: torch.Tensor) -> torch.Tensor:
        values = to_model(constrained(flat))
        return layout.flatten({n: transforms[n](values[n]) for n in layout.names})

    jacobian = torch.autograd.functional.jacobian(unconstrained, mode)
    variance = torch.einsum("ij,jk,ik->i", jacobian, covariance, jacobian)
    if not torch.isfinite(variance).all():
        return "the mode's scales do not carry over to the centered populations"
    starts = []
    for z in points:
        values = to_model(constrained(z))
        starts.append({n: values[n].detach() for n in layout.names})
    return starts, layout.unflatten(variance.clamp(1e-10, 4.0))


def _mode_and_hessian(
    model: Callable[..., None],
    model_kwargs: dict[str, Any],
    init: dict[str, torch.Tensor] | None,
) -> tuple | str:
    """(the sites' flat layout, transforms, flat potential, mode, Hessian there) in
    the unconstrained space, or why there is none."""
    strategy = {} if init is None else {"init_strategy": init_to_value(values=init)}
    try:
        init, potential_fn, transforms, _ = initialize_model(
            model, model_kwargs=model_kwargs, **strategy
        )
    except (RuntimeError, ValueError) as exc:
        return f"Pyro could not set the model up: {str(exc).splitlines()[0]}"
    layout = FlatLayout.of(init)
    x0 = layout.flatten(init).detach().double()
    if x0.numel() > MAX_DIM:
        return (
            f"{x0.numel()} unconstrained dimensions, more than the {MAX_DIM} its "
            "Hessian is computed for"
        )

    def potential(flat: torch.Tensor) -> torch.Tensor:
        return potential_fn(layout.unflatten(flat))

    def gradient(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = flat.detach().requires_grad_()
        value = potential(flat)
        (grad,) = torch.autograd.grad(value, flat)
        return value.detach(), grad

    x = x0.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [x], lr=1, max_iter=300, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    best = [float(potential(x0).detach()), x0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = potential(x)
        value.backward()
        found = float(value.detach())
        if math.isfinite(found) and found < best[0]:
            best[:] = [found, x.detach().clone()]
        return value

    # the line search may step over a wall (-inf log density, NaN gradients): keep
    # the best finite point seen, without Pyro's NaN warning for every such step
    with contextlib.suppress(RuntimeError, ValueError), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")
        optimizer.step(closure)
    mode = best[1]
    value, _ = gradient(mode)
    if not torch.isfinite(value):
        return "the search for the mode found no point of finite density"
    d = mode.numel()
    _, center = gradient(mode)
    hessian = torch.empty(d, d, dtype=torch.float64)
    for i in range(d):
        step = torch.zeros(d, dtype=torch.float64)
        step[i] = STEP
        up_value, up = gradient(mode + step)
        down_value, down = gradient(mode - step)
        # the mode may sit at a wall (t just below the fastest RT): one-sided there
        if torch.isfinite(up_value) and torch.isfinite(down_value):
            hessian[i] = (up - down) / (2 * STEP)
        elif torch.isfinite(up_value):
            hessian[i] = (up - center) / STEP
        elif torch.isfinite(down_value):
            hessian[i] = (center - down) / STEP
        else:
            hessian[i] = 0.0
            hessian[i, i] = 1 / STEP**2
    if not torch.isfinite(hessian).all():
        return "the Hessian at the mode is not finite"
    hessian = 0.5 * (hessian + hessian.T)
    return layout, transforms, potential, mode, hessian
