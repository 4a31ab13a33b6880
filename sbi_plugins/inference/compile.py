"""The model's potential compiled with `torch.compile`, checked against Pyro's.

The potential (`sbi_plugins.model.potential`) is derived from the model's one
statement; before it is sampled it is compared with Pyro's own potential of the
same model, value and gradient, at the chains' starting points: a compiled graph
that disagrees (or a compiler that fails) is never sampled, the fit warns and
samples through Pyro's potential instead.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyro
import pyro.util
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad
from torch import Tensor

from sbi_plugins.inference.flat import FLAT, FlatLayout
from sbi_plugins.model.potential import Potential

if TYPE_CHECKING:
    from sbi_plugins.model.model import HierarchicalModel

MIN_COMPILED_ITERATIONS = 4000
MIN_COMPILED_ROWS = 500
"""Compile by default only when both are reached: compiling takes 5 to 45 s (the
first time; torch caches it on disk), and saves about 1.5 ms per leapfrog step on
the DDM's 1,000 trials, so it pays from a few thousand iterations on. On small data
there is little to save (the 150 cookies: about 0.5 ms per step)."""
VALUE_TOLERANCE = 1e-5
"""Relative agreement asked of the compiled potential: the float32 networks'
operations are fused in another order (rounding over 1,000 rows reaches 1e-6)."""
GRADIENT_TOLERANCE = 1e-4
"""Agreement of each gradient component, relative to the largest one."""

PotentialFn = Callable[[Mapping[str, Tensor]], Tensor]


def worth_compiling(
    compile: bool | None, chains: int, iterations: int, rows: int
) -> bool:
    """`compile` as the user gave it; None decides by the amount of sampling and
    data, and the environment variable SBI_PLUGINS_COMPILE=0 or 1 overrides that
    default."""
    if compile is not None:
        return compile
    setting = os.environ.get("SBI_PLUGINS_COMPILE", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return chains * iterations >= MIN_COMPILED_ITERATIONS and rows >= MIN_COMPILED_ROWS


def pyro_potential(
    model: HierarchicalModel,
    model_kwargs: Mapping[str, Any],
    start: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], PotentialFn, dict[str, Any]]:
    """Pyro's set-up of the model at `start` (constrained values): the
    unconstrained start, Pyro's potential and its transforms. The user's global
    random state is left as it was."""
    state = pyro.util.get_rng_state()
    try:
        pyro.set_rng_seed(0)
        init, potential_fn, transforms, _ = initialize_model(
            model,
            model_kwargs=dict(model_kwargs),
            max_plate_nesting=1,
            init_strategy=init_to_value(values=dict(start)),
        )
    finally:
        pyro.util.set_rng_state(state)
    return init, potential_fn, transforms


ValueAndGradient = Callable[[Tensor], tuple[Tensor, Tensor]]
"""`flat -> (gradient, value)`, as `torch.func.grad_and_value` returns them."""


class _WithGradient(torch.autograd.Function):
    """The potential's value as an autograd node whose backward is the gradient
    computed with it, in the same compiled call: autograd then has one node to
    run, not the compiled backward graph and its saved activations (a fifth of
    a gradient's time on the DDM, over a quarter on the 36,000-row study:
    benchmarks/gradient_cost.py, docs/performance.md)."""

    @staticmethod
    def forward(ctx: Any, flat: Tensor, value_and_gradient: ValueAndGradient) -> Tensor:
        gradient, value = value_and_gradient(flat.detach())
        ctx.save_for_backward(gradient)
        return value

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor, None]:
        (gradient,) = ctx.saved_tensors
        return upstream * gradient, None


class CompiledPotential:
    """The compiled potential, of the model's sites (`potential(params)`) or of
    their flat vector (`potential.flat(vector)`, what NUTS calls: see
    `sbi_plugins.inference.flat`). `compiled` gives the value and its gradient
    in one call."""

    def __init__(
        self, eager: Potential, layout: FlatLayout, compiled: ValueAndGradient
    ) -> None:
        self.eager, self.layout, self._compiled = eager, layout, compiled

    def flat(self, flat: Tensor) -> Tensor:
        if not flat.requires_grad:  # Pyro's rare calls without a gradient
            return self.eager(self.layout.unflatten(flat))
        # distributions built inside (the population's) skip validation too, so
        # the compiled graph is the same whatever the global setting is
        with pyro.validation_enabled(False):
            return _WithGradient.apply(flat, self._compiled)

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        if not all(v.requires_grad for v in params.values()):
            return self.eager(params)
        return self.flat(self.layout.flatten(params))


def _fresh(function: Callable) -> Callable:
    """The same function with a code object of its own: torch keeps compiled code
    per code object, so each fit's potential gets its own cache, freed with it,
    and neither piles up to the recompile limit nor touches anyone else's."""
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


def disagreement(
    candidate: PotentialFn,
    reference: PotentialFn,
    points: Sequence[Mapping[str, Tensor]],
) -> str | None:
    """Where `candidate`'s value or gradient differs from `reference`'s at
    unconstrained `points`; None where they agree to the tolerances."""
    for i, point in enumerate(points):
        point = {k: v.detach() for k, v in point.items()}
        grads, value = potential_grad(candidate, point)
        expected_grads, expected = potential_grad(reference, point)
        if not torch.isfinite(expected):
            continue
        if abs(float(value - expected)) > VALUE_TOLERANCE * (1 + float(expected.abs())):
            return f"value {float(value):.9g} vs {float(expected):.9g} at point {i}"
        largest = max(float(g.abs().max()) for g in expected_grads.values())
        for k, g in expected_grads.items():
            error = float((grads[k] - g).abs().max())
            if error > GRADIENT_TOLERANCE * (1 + largest):
                return f"gradient of {k!r} off by {error:.3g} at point {i}"
    return None


def compiled_potential(
    model: HierarchicalModel,
    model_kwargs: Mapping[str, Any],
    starts: Sequence[Mapping[str, Tensor]],
) -> CompiledPotential | None:
    """The model's potential compiled with `torch.compile` (forward and gradient
    fused into a few C++ loops), checked at every chain's start (constrained
    values) against Pyro's own potential of the model. Compiled here, before chains
    are forked, so every chain inherits the compiled code. None, with a warning
    that says why, where compiling fails (no C++ compiler, an operation the
    compiler cannot take) or disagrees: sampling then goes through Pyro's own
    potential, as without compiling."""
    init, reference, transforms = pyro_potential(model, model_kwargs, starts[0])
    potential = Potential(model, transforms, model_kwargs)
    layout = FlatLayout.of(init)

    def of_flat(flat: Tensor) -> Tensor:
        return potential(layout.unflatten(flat))

    def value_and_gradient(flat: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.grad_and_value(of_flat)(flat)

    compiled = torch.compile(_fresh(value_and_gradient), fullgraph=True, dynamic=False)
    potential_fn = CompiledPotential(potential, layout, compiled)
    points = [
        {k: transforms[k](v) for k, v in start.items() if k in transforms}
        for start in starts
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as the chains will run it
        with torch._inductor.config.patch(compile_threads=1):
            start = {FLAT: layout.flatten(init).detach()}
            potential_grad(lambda p: potential_fn.flat(p[FLAT]), start)
            problem = disagreement(potential_fn, reference, points)
    except Exception as exc:  # no compiler, or an operation it cannot take
        first = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(
            f"could not compile the model's potential ({type(exc).__name__}: "
            f"{first}); sampling without compiling (slower). Pass compile=False "
            "(--no-compile) to skip the attempt, or install a C++ compiler (g++)",
            stacklevel=4,
        )
        return None
    finally:
        torch.set_num_threads(threads)
    if problem is not None:
        warnings.warn(
            f"the compiled potential disagrees with Pyro's potential of the model "
            f"({problem}); sampling Pyro's potential, without compiling. Pass "
            "compile=False (--no-compile) to skip the attempt",
            stacklevel=4,
        )
        return None
    return potential_fn
