"""The one module that reaches into sbi's and nflows' internals.

sbi has no public API for two things sbi-plugins does: training through hooks in
sbi's epoch loop (a cosine learning-rate schedule, whole-batch indexing), and
scoring grouped data with the networks' parts (MNLE's choice net, condition
embedding and flow splines; a categorical estimator's MADE). Every such access is
here, behind small named accessors, so that the rest of the package depends on sbi's
public API and on this module only.

`check_sbi_internals` tests every internal these accessors rely on, once per
process, on tiny networks built the way sbi-plugins builds its own: an sbi release
that moved one fails at the first estimator trained or loaded for scoring, with a
message that names what broke and the sbi versions this release supports, not deep
inside a fit.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from sbi.inference import NLE
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from sbi_plugins.errors import EstimatorError

SUPPORTED_SBI = ">=0.27,<0.28"
"""The sbi versions this release is tested with; pyproject.toml declares the same
range (tests/test_sbi_internals.py holds them together)."""


class SbiInternalsError(EstimatorError):
    """An sbi or nflows internal that sbi-plugins relies on is missing or changed."""


def _require(obj: Any, name: str, owner: str) -> Any:
    """`obj.name`, or an error that names the internal that is gone."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise SbiInternalsError(f"{owner} has no attribute {name!r}") from None


# --------------------------------------------------------------------------------
# training


class EpochHookedNLE(NLE):
    """sbi's NLE trainer with the hooks sbi-plugins trains through: `wrap_loader`
    may replace the training and validation loaders sbi builds, and
    `on_epoch_start(optimizer)` / `on_epoch_end()` bracket every training epoch.
    sbi has no callbacks, so the hooks ride on its private `_train_epoch`."""

    def wrap_loader(self, loader: DataLoader) -> Iterable:
        return loader

    def on_epoch_start(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_epoch_end(self) -> None:
        pass

    def get_dataloaders(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        train_loader, val_loader = super().get_dataloaders(*args, **kwargs)
        return self.wrap_loader(train_loader), self.wrap_loader(val_loader)

    def _train_epoch(self, *args: Any, **kwargs: Any) -> float:
        self.on_epoch_start(_require(self, "optimizer", "sbi's NLE trainer"))
        loss = super()._train_epoch(*args, **kwargs)
        self.on_epoch_end()
        return loss


def loader_tensors(loader: DataLoader) -> tuple[Tensor, ...]:
    """The tensors (theta, x, prior masks) behind one of sbi's training loaders."""
    dataset = loader.dataset
    if not isinstance(dataset, TensorDataset):
        raise SbiInternalsError(
            f"sbi's training loader holds a {type(dataset).__name__}, not a "
            "TensorDataset"
        )
    return tuple(dataset.tensors)


# --------------------------------------------------------------------------------
# categorical (mass) estimators


def mass_net(estimator: nn.Module) -> nn.Module:
    """The CategoricalMADE inside sbi's CategoricalMassEstimator."""
    return _require(estimator, "net", "sbi's CategoricalMassEstimator")


def num_variables(made: nn.Module) -> int:
    """How many categorical variables a CategoricalMADE models."""
    return int(_require(made, "num_variables", "sbi's CategoricalMADE"))


def first_variable_logits(made: nn.Module, condition: Tensor) -> Tensor:
    """Logits of a CategoricalMADE's first variable, `(rows, categories)`. In a
    MADE they depend on the condition only, so a zero input gives them all."""
    return made.forward(condition.new_zeros(len(condition), 1), condition=condition)


# --------------------------------------------------------------------------------
# MNLE (sbi's MixedDensityEstimator) and its nflows flow


@dataclass(frozen=True)
class SplineSettings:
    """One rational-quadratic spline's settings, as nflows builds its knots (named
    apart from nflows' attributes, so that a scan can tell the two apart)."""

    bins: int
    bound: float
    """Outside [-bound, bound] the spline is the identity."""
    min_width: float
    min_height: float
    min_slope: float
    """The least derivative at a knot."""
    context_width: int | None
    """The context net's width: nflows divides widths and heights by its root."""


@dataclass(frozen=True)
class SplineStep:
    """A spline transform of a one-dimensional flow, its parameters a function of
    the context alone."""

    index: int
    """Its position among the flow's splines."""
    settings: SplineSettings
    transform_net: nn.Module = field(repr=False)
    predictor: nn.Sequential | None = field(repr=False)
    """The context net's layers where it is a plain Sequential, else None."""

    def unnormalized_parameters(self, context: Tensor) -> Tensor:
        """The spline's unnormalized widths, heights and derivatives per context
        row, `(rows, 3 * num_bins - 1)`."""
        return self.transform_net(context[:, :0], context)


@dataclass(frozen=True)
class FlowParts:
    """An nflows flow, taken apart for scoring one value per row."""

    context_net: nn.Module
    """The flow's embedding of its condition (for MNLE: choice, embedded theta)."""
    steps: tuple[SplineStep | nn.Module, ...]
    """Its transforms in order, the splines described, the others as they are."""
    splines: tuple[SplineStep, ...]
    """The splines among the steps, in order."""
    standard_normal_base: bool
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Tables derived from these modules (grouped.py's stacked weights), kept with
    them rather than in a module-level table that torch.compile would guard on."""


@dataclass(frozen=True)
class MnleParts:
    """What the per-group scoring path and the refinement stages use of an MNLE."""

    choice_estimator: nn.Module
    """The choice part (a CategoricalMassEstimator), trained on its own loss."""
    choice_net: nn.Module
    """Its CategoricalMADE."""
    theta_embedding: nn.Module
    """theta -> embedded theta (sbi's condition embedding), shared by both parts."""
    flow_estimator: nn.Module
    """The continuous part (sbi's NFlowsFlow)."""
    log_value: bool
    """Whether the flow models the log of the continuous value."""
    flow: FlowParts | None
    """The flow taken apart; None where it is not an nflows Flow."""


_MNLE_PARTS = "_sbi_plugins_mnle_parts"

SPLINE = PiecewiseRationalQuadraticCouplingTransform


def is_mnle(net: nn.Module) -> bool:
    """Whether `net` has the two parts of sbi's MixedDensityEstimator."""
    return hasattr(net, "discrete_net") and hasattr(net, "continuous_net")


def mnle_parts(net: nn.Module) -> MnleParts:
    """The parts of sbi's MixedDensityEstimator, cached on the network (scoring
    asks for them at every gradient step)."""
    cached = net.__dict__.get(_MNLE_PARTS)
    if cached is not None:
        return cached
    owner = "sbi's MixedDensityEstimator"
    choice = _require(net, "discrete_net", owner)
    continuous = _require(net, "continuous_net", owner)
    flow = getattr(continuous, "net", None)
    parts = MnleParts(
        choice_estimator=choice,
        choice_net=mass_net(choice),
        theta_embedding=_require(net, "condition_embedding", owner),
        flow_estimator=continuous,
        log_value=bool(_require(net, "log_transform_input", owner)),
        flow=flow_parts(flow) if isinstance(flow, Flow) else None,
    )
    object.__setattr__(net, _MNLE_PARTS, parts)  # a cache, not a submodule
    return parts


def replace_choice_net(net: nn.Module, choice_estimator: nn.Module) -> None:
    """Put another choice part into an MNLE (sbi builds it with ReLU only)."""
    _require(net, "discrete_net", "sbi's MixedDensityEstimator")
    net.discrete_net = choice_estimator
    net.__dict__.pop(_MNLE_PARTS, None)


def flow_parts(flow: Flow) -> FlowParts:
    """An nflows Flow's context net, transforms (splines with their settings) and
    whether its base is a standard normal."""
    composite = _require(flow, "_transform", "nflows' Flow")
    if not isinstance(composite, CompositeTransform):
        raise SbiInternalsError(
            f"nflows' Flow holds a {type(composite).__name__}, not a CompositeTransform"
        )
    steps: list[SplineStep | nn.Module] = []
    splines: list[SplineStep] = []
    for transform in _require(composite, "_transforms", "nflows' CompositeTransform"):
        if isinstance(transform, SPLINE):
            splines.append(_spline_step(transform, len(splines)))
            steps.append(splines[-1])
        else:
            steps.append(transform)
    return FlowParts(
        context_net=_require(flow, "_embedding_net", "nflows' Flow"),
        steps=tuple(steps),
        splines=tuple(splines),
        standard_normal_base=isinstance(
            _require(flow, "_distribution", "nflows' Flow"), StandardNormal
        ),
    )


def _spline_step(transform: nn.Module, index: int) -> SplineStep:
    owner = "nflows' PiecewiseRationalQuadraticCouplingTransform"
    transform_net = _require(transform, "transform_net", owner)
    predictor = getattr(transform_net, "spline_predictor", None)
    settings = SplineSettings(
        bins=int(_require(transform, "num_bins", owner)),
        bound=float(_require(transform, "tail_bound", owner)),
        min_width=float(_require(transform, "min_bin_width", owner)),
        min_height=float(_require(transform, "min_bin_height", owner)),
        min_slope=float(_require(transform, "min_derivative", owner)),
        context_width=getattr(transform_net, "hidden_features", None),
    )
    return SplineStep(
        index=index,
        settings=settings,
        transform_net=transform_net,
        predictor=predictor if isinstance(predictor, nn.Sequential) else None,
    )


# --------------------------------------------------------------------------------
# the start-up self-test


def sbi_version() -> str:
    """The installed sbi's version, as its distribution records it."""
    try:
        return importlib.metadata.version("sbi")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        import sbi

        return str(getattr(sbi, "__version__", "unknown"))


def _plugins_version() -> str:
    from sbi_plugins import __version__

    return __version__


def check_sbi_internals(purpose: Literal["scoring", "training"] = "scoring") -> None:
    """Raise an EstimatorError naming what broke, and the sbi versions this release
    supports, if an internal the accessors rely on for `purpose` is missing or
    misbehaves with the installed sbi. Runs once per process and purpose, on tiny
    networks: tens of milliseconds (training's first optimizer also imports
    torch's compiler, which any first training pays anyway)."""
    failure = _self_test_failure(purpose)
    if failure is not None:
        raise EstimatorError(
            f"sbi-plugins {_plugins_version()} needs sbi {SUPPORTED_SBI}; found sbi "
            f"{sbi_version()}: {failure}"
        )


@functools.cache
def _self_test_failure(purpose: str) -> str | None:
    """The first of `purpose`'s checks that fails, as `what: why`; None if all
    pass. Seeded inside a fork of torch's RNG: the user's global state is left as
    it was, and the checks do the same on every run. One thread: on networks
    this small, more only wait for each other (several times slower on a busy
    machine)."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.random.default_generator.manual_seed(0)
            torch.set_num_threads(1)
            for what, check in SELF_TEST_CHECKS[purpose]:
                try:
                    check()
                except Exception as exc:
                    return f"{what}: {type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)
    return None


def self_test_seconds(purpose: str) -> float:
    """Run `purpose`'s self-test afresh and return its wall time (for its test)."""
    _self_test_failure.cache_clear()
    started = time.perf_counter()
    _self_test_failure(purpose)
    return time.perf_counter() - started


def _assert_close(fast: Tensor, slow: Tensor, what: str) -> None:
    if fast.shape != slow.shape or not torch.allclose(fast, slow, rtol=1e-4, atol=1e-4):
        error = (fast - slow).abs().max() if fast.shape == slow.shape else math.nan
        raise SbiInternalsError(
            f"{what} differs from sbi's log_prob (shapes {tuple(fast.shape)} and "
            f"{tuple(slow.shape)}, largest difference {float(error):.3g})"
        )


def _compare_grouped(
    net: nn.Module,
    grouped_log_prob: Callable[..., Tensor],
    theta: Tensor,
    index: Tensor,
    x: Tensor,
    what: str,
) -> None:
    """A per-group path against sbi's own `log_prob`, in value and in gradient,
    with a batch of two draws."""
    theta = theta.detach().requires_grad_(True)
    fast = grouped_log_prob(net, theta, index, x, {})
    slow = torch.stack([net.log_prob(x[None], t[index])[0] for t in theta])
    _assert_close(fast, slow, what)
    (g_fast,) = torch.autograd.grad(fast.sum(), theta)
    (g_slow,) = torch.autograd.grad(slow.sum(), theta)
    _assert_close(g_fast, g_slow, f"the gradient of {what}")


def _check_trainer_api() -> None:
    parameters = inspect.signature(NLE.__init__).parameters
    if "tracker" not in parameters:
        raise SbiInternalsError("sbi's NLE takes no tracker= (added in sbi 0.26)")
    for name in ("_train_epoch", "get_dataloaders"):
        _require(NLE, name, "sbi's NLE trainer")


def _check_training_epoch() -> None:
    """One epoch of the trainer `train` uses, on a tiny categorical estimator: the
    hooks must run with sbi's optimizer and see its TensorDataset loaders."""
    from sbi.utils import BoxUniform

    from sbi_plugins.estimators.networks import build_network
    from sbi_plugins.estimators.training import BatchedNLE, NoTracker

    seen: list[Any] = []
    built: list[nn.Module] = []

    class Probe(BatchedNLE):
        def wrap_loader(self, loader: DataLoader) -> Iterable:
            if len(loader_tensors(loader)) < 2:
                raise SbiInternalsError("sbi's loader holds no (theta, x) tensors")
            seen.append("loader")
            return super().wrap_loader(loader)

        def on_epoch_start(self, optimizer: torch.optim.Optimizer) -> None:
            seen.append(optimizer)
            super().on_epoch_start(optimizer)

        def on_epoch_end(self) -> None:
            seen.append("end")
            super().on_epoch_end()

    def builder(theta: Tensor, x: Tensor) -> nn.Module:
        config = {"hidden_features": 8, "num_layers": 1, "num_categories": [4]}
        built.append(build_network("categorical", config, theta, x))
        return built[-1]

    theta = torch.rand(64, 1)
    x = torch.randint(0, 4, (64, 1)).float()
    trainer = Probe(
        prior=BoxUniform(torch.zeros(1), torch.ones(1)),
        density_estimator=builder,
        show_progress_bars=False,
        tracker=NoTracker(),
    )
    trainer.epoch_budget = 2
    net = trainer.append_simulations(theta, x).train(
        training_batch_size=16,
        max_num_epochs=1,
        show_train_summary=False,
    )
    if not built or net is not built[0]:
        raise SbiInternalsError("NLE.train did not return the network it built")
    epochs = int(trainer.summary["epochs_trained"][-1])
    optimizers = [s for s in seen if isinstance(s, torch.optim.Optimizer)]
    expected = ["loader"] * 2 + [optimizers[0] if optimizers else None, "end"] * epochs
    if epochs < 1 or seen != expected:
        raise SbiInternalsError(
            f"the training hooks ran as {seen!r}, not as two loaders, then epoch "
            f"start and end for each of the {epochs} epochs trained"
        )
    trained = {id(p) for group in optimizers[0].param_groups for p in group["params"]}
    if trained != {id(p) for p in net.parameters()}:
        raise SbiInternalsError("sbi's optimizer does not hold the network's weights")
    if not math.isfinite(float(trainer.summary["best_validation_loss"][-1])):
        raise SbiInternalsError("training gave no finite validation loss")


def _check_categorical() -> None:
    from sbi_plugins.estimators import grouped
    from sbi_plugins.estimators.networks import build_network

    theta = torch.rand(32, 1) * 10
    x = torch.randint(0, 6, (32, 1)).float()
    config = {"hidden_features": 8, "num_layers": 1, "num_categories": [6]}
    net = build_network("categorical", config, theta, x).eval()
    if num_variables(mass_net(net)) != 1:
        raise SbiInternalsError("a one-count CategoricalMADE has not one variable")
    index = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    _compare_grouped(
        net,
        grouped.count_log_prob,
        torch.rand(2, 3, 1) * 10,
        index,
        x[: len(index)],
        "the per-group categorical path",
    )


def _check_mnle(options: dict[str, Any]) -> Callable[[], None]:
    def check() -> None:
        from sbi_plugins.estimators import grouped
        from sbi_plugins.estimators.networks import build_network

        theta = torch.rand(64, 2)
        x = torch.stack(
            [torch.rand(64) * 2 + 0.1, torch.randint(0, 2, (64,)).float()], 1
        )
        config = {
            "hidden_features": 8,
            "num_transforms": 2,
            "num_bins": 4,
            "num_categories": [2],
            **options,
        }
        net = build_network("mnle", config, theta, x).eval()
        unsupported = grouped.mnle_path_unsupported(net)
        if unsupported is not None:
            raise SbiInternalsError(f"no per-group MNLE path: {unsupported}")
        index = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
        _compare_grouped(
            net,
            grouped.mnle_log_prob,
            torch.rand(2, 3, 2),
            index,
            x[: len(index)],
            "the per-group MNLE path",
        )

    return check


_SCORING_CHECKS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("categorical estimator", _check_categorical),
    ("MNLE as sbi builds it", _check_mnle({})),
    (
        "MNLE with log-time and a smooth choice net",
        _check_mnle({"log_transform_x": True, "discrete_activation": "silu"}),
    ),
)

SELF_TEST_CHECKS: dict[str, tuple[tuple[str, Callable[[], None]], ...]] = {
    "scoring": _SCORING_CHECKS,
    "training": (
        ("sbi's NLE trainer", _check_trainer_api),
        ("one training epoch", _check_training_epoch),
        *_SCORING_CHECKS,  # building an MNLE and refining it use the same parts
    ),
}
"""What the self-test checks before scoring and before training, in order; the
first failure is reported."""
