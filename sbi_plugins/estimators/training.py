"""Simulate from the training prior and train an sbi likelihood estimator."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sbi.utils import BoxUniform
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import BatchSampler, DataLoader
from tqdm.auto import tqdm

from sbi_plugins.contract import EstimatorRecipe, Simulator
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators import reduction
from sbi_plugins.estimators.artifact import TrainedEstimator, domain_of
from sbi_plugins.estimators.networks import build_network
from sbi_plugins.estimators.sbi_internals import (
    EpochHookedNLE,
    check_sbi_internals,
    first_variable_logits,
    loader_tensors,
    mnle_parts,
)
from sbi_plugins.estimators.simulation import (  # noqa: F401 (re-exported)
    SIMULATION_CHUNK,
    check_simulator_output,
    plan_chunks,
    simulate_chunk,
    simulate_chunks,
)
from sbi_plugins.versions import package_versions

NUM_EXAMPLE_ROWS = 64

TRAINING_OPTIONS = (
    "choice_simulations",
    "choice_epochs",
    "flow_simulations",
    "flow_epochs",
)
"""Recipe options that steer training, not the network's shape."""


class BatchedNLE(EpochHookedNLE):
    """sbi's NLE trainer, fed whole batches, with a cosine learning-rate decay.

    sbi's loaders fetch and collate one row at a time, which costs far more than a
    small network's step; indexing the tensors with a batch of indices gives the same
    batches (same sampler, same order) several times faster. At a fixed learning rate
    Adam's noise leaves the learned likelihood several times further (in KL) from the
    truth than when the rate decays to zero over the epoch budget (cookie, 100k
    simulations: KL 0.0078 at a fixed rate, 0.0019 with cosine decay).
    """

    epoch_budget: int = 100
    scheduler: CosineAnnealingLR | None = None

    def on_epoch_start(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scheduler is None or self.scheduler.optimizer is not optimizer:
            self.scheduler = CosineAnnealingLR(optimizer, T_max=self.epoch_budget)

    def on_epoch_end(self) -> None:
        self.scheduler.step()

    def wrap_loader(self, loader: DataLoader) -> IndexedBatches:
        return IndexedBatches(loader)


class NoTracker:
    """sbi logs to TensorBoard in ./sbi-logs by default; a library must not write
    into the user's working directory. The training summary goes into the
    estimator's metadata instead."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


class IndexedBatches:
    """Iterates a DataLoader's batches by indexing its tensors with whole batches."""

    def __init__(self, loader: DataLoader) -> None:
        self.columns = loader_tensors(loader)
        self.batch_size = loader.batch_size
        self.batches = BatchSampler(loader.sampler, loader.batch_size, loader.drop_last)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for indices in self.batches:
            index = torch.as_tensor(indices)
            yield tuple(t[index] for t in self.columns)


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNGs seeded with `seed` inside, the user's state restored after:
    training is reproducible without reseeding the caller's global RNG."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def simulate_training_data(
    simulator: Simulator,
    num_simulations: int,
    seed: int,
    *,
    progress: bool = True,
    client: Any = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw parameters uniformly over the training box and simulate one trial each,
    in seeded chunks: on `client`'s Dask cluster (a Client or a scheduler address),
    else in `workers` local processes. The same seed gives the same data anywhere."""
    chunks = simulate_chunks(
        simulator,
        seed,
        plan_chunks(num_simulations),
        client=client,
        workers=workers,
        progress=progress,
    )
    return np.concatenate([t for t, _ in chunks]), np.concatenate(
        [x for _, x in chunks]
    )


def training_device(device: str | torch.device) -> torch.device:
    """The torch device to train on; "auto" picks a GPU when torch sees one. Asking
    for CUDA without one is an error, not a silent fall-back to the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EstimatorError(
            f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EstimatorError(
            f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA "
            "GPU; train with device='cpu' (or 'auto'), or install a CUDA build of torch"
        )
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise EstimatorError(
            f"device {device!r} asked for, but torch sees "
            f"{torch.cuda.device_count()} CUDA GPU(s)"
        )
    if target.type not in ("cpu", "cuda"):
        raise EstimatorError(
            f"device {device!r} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        )
    return target


def drop_invalid(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop simulations with NaN or infinite output, saying how many."""
    valid = np.isfinite(x).all(axis=1)
    if not valid.all():
        warnings.warn(
            f"dropped {int((~valid).sum())} of {len(x)} simulations with NaN or "
            "infinite output before training",
            stacklevel=3,
        )
    if valid.sum() < 100:
        raise EstimatorError(
            "fewer than 100 valid simulations: check the simulator's output"
        )
    return theta[valid], x[valid]


def network_config(
    kind: str, recipe: EstimatorRecipe, simulator: Simulator, x: np.ndarray
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "hidden_features": recipe.hidden_features,
        "num_layers": recipe.num_layers,
        "num_transforms": recipe.num_transforms,
        **{k: v for k, v in recipe.options.items() if k not in TRAINING_OPTIONS},
    }
    names = simulator.parameter_names
    floors = [reduction.observable_floor(o, names) for o in simulator.observables]
    shifts = [[j, floor] for j, floor in enumerate(floors) if floor is not None]
    if shifts:
        config["shift"] = shifts
    scales = [
        [j, reduction.monomial(o.scale, names)]
        for j, o in enumerate(simulator.observables)
        if o.scale
    ]
    if scales:
        config["scale"] = scales
    if simulator.network_condition:
        config["condition"] = [
            reduction.monomial(m, names) for m in simulator.network_condition
        ]
    if config.get("log_theta") == "auto":
        lower = list(simulator.lower)
        config["log_theta"] = (
            [reduction.is_positive(m, lower) for m in config["condition"]]
            if "condition" in config
            else [bool(p > 0) for p in lower]
        )
    if kind == "categorical":
        if (x < 0).any() or (x != np.round(x)).any():
            raise EstimatorError(
                f"simulator {simulator.name!r} returned non-integer or negative counts"
            )
        config["num_categories"] = [int(x[:, j].max()) + 1 for j in range(x.shape[1])]
    elif kind == "mnle":
        kinds = [o.kind for o in simulator.observables]
        choice = [i for i, k in enumerate(kinds) if k == "choice"]
        if choice != list(range(len(kinds) - len(choice), len(kinds))):
            raise EstimatorError(
                f"simulator {simulator.name!r}: MNLE needs the choice observables "
                f"last (continuous first), got kinds {kinds}"
            )
        config["num_categories"] = [len(simulator.observables[j].codes) for j in choice]
    return config


def subtract_shifts(
    config: dict[str, Any], theta: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The network learns a shifted observable's excess over its shift parameter
    (scaled, where the simulator declares a scale); simulations without a positive
    excess (time-step artefacts) are dropped."""
    theta, x, dropped = reduction.reduce_training_data(config, theta, x)
    if dropped:
        warnings.warn(
            f"dropped {dropped} simulations whose shifted value does not exceed its "
            "shift parameter",
            stacklevel=3,
        )
    return theta, x


def encode_for_network(simulator: Simulator, x: np.ndarray) -> np.ndarray:
    """Choice codes become category indices 0..K-1, as sbi's categorical nets want;
    a code the observable does not declare is an error in the simulator."""
    x = x.copy()
    for j, obs in enumerate(simulator.observables):
        if obs.kind != "choice":
            continue
        codes = np.asarray(obs.codes)
        known = np.isin(x[:, j], codes)
        if not known.all():
            raise EstimatorError(
                f"simulator {simulator.name!r} returned {obs.name} values "
                f"{sorted(set(x[~known, j]))[:5]} outside its codes {obs.codes}"
            )
        x[:, j] = np.argmax(x[:, j, None] == codes, axis=1)
    return x


def observed_support(simulator: Simulator, x: np.ndarray) -> dict[str, list[float]]:
    return {
        o.name: [float(x[:, j].min()), float(x[:, j].max())]
        for j, o in enumerate(simulator.observables)
    }


def training_recipe(
    simulator: Simulator,
    recipe: EstimatorRecipe | None = None,
    *,
    num_simulations: int | None = None,
    **recipe_overrides: Any,
) -> EstimatorRecipe:
    """The recipe `train` uses: `recipe` (default: the simulator's) with the
    overrides applied. The cache path is keyed on it, so an estimator trained with
    other options never stands in for the recipe's own."""
    if num_simulations is not None:
        recipe_overrides["num_simulations"] = num_simulations
    return dataclasses.replace(recipe or simulator.recipe, **recipe_overrides)


def train(
    simulator: Simulator,
    *,
    num_simulations: int | None = None,
    seed: int = 0,
    recipe: EstimatorRecipe | None = None,
    progress: bool = True,
    client: Any = None,
    workers: int | None = None,
    device: str = "cpu",
    **recipe_overrides: Any,
) -> TrainedEstimator:
    """Simulate from the training prior and fit the recipe's estimator with sbi's NLE.

    Simulations run in seeded chunks on `client`'s Dask cluster (a
    `dask.distributed.Client` or a scheduler address) when given, else in `workers`
    local processes (default: one per core for large budgets); the same seed gives
    the same training data either way. The network trains on `device` ("cpu",
    "cuda", "cuda:1", or "auto": a GPU when there is one) and comes back on the CPU,
    so its file loads on any machine.

    `recipe_overrides` replace recipe fields (e.g. `hidden_features=16`,
    `max_num_epochs=5`) so tests and quick looks can train tiny estimators.

    The simulator is first run at the training box's corners and centre
    (`check_simulator_output`): output training cannot use is refused in one line
    before the budget is spent. The seed also seeds torch inside a fork of its RNG:
    the same seed gives the same network, and the caller's global RNG state is left
    as it was.
    """
    target = training_device(device)
    check_sbi_internals("training")
    recipe = training_recipe(
        simulator, recipe, num_simulations=num_simulations, **recipe_overrides
    )
    kind = dataclasses.replace(simulator, recipe=recipe).estimator_kind()
    check_simulator_output(simulator, seed)
    started = time.perf_counter()
    theta_np, x_np = simulate_training_data(
        simulator,
        recipe.num_simulations,
        seed,
        progress=progress,
        client=client,
        workers=workers,
    )
    simulated = time.perf_counter()
    theta_np, x_np = drop_invalid(theta_np, x_np)
    config = network_config(kind, recipe, simulator, x_np)
    support = observed_support(simulator, x_np)
    theta_np, x_np = subtract_shifts(config, theta_np, x_np)
    theta = torch.as_tensor(theta_np, dtype=torch.float32)
    x = torch.as_tensor(encode_for_network(simulator, x_np), dtype=torch.float32)

    with seeded_torch(seed, target):
        prior = BoxUniform(
            torch.as_tensor(simulator.lower, dtype=torch.float32),
            torch.as_tensor(simulator.upper, dtype=torch.float32),
            device=str(target),
        )
        trainer = BatchedNLE(
            prior=prior,
            density_estimator=lambda t, xx: build_network(kind, config, t, xx),
            device=str(target),
            show_progress_bars=progress,
            tracker=NoTracker(),
        )
        trainer.epoch_budget = recipe.max_num_epochs
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*mixed neural density.*")
            # the cosine schedule ends at max_num_epochs by design, not for lack of time
            warnings.filterwarnings("ignore", message="Maximum number of epochs")
            if config.get("log_transform_x"):
                # sbi looks for outliers in x itself; the network z-scores log x
                warnings.filterwarnings("ignore", message="Data has extreme outliers")
            net = trainer.append_simulations(theta, x).train(
                training_batch_size=recipe.training_batch_size,
                learning_rate=recipe.learning_rate,
                max_num_epochs=recipe.max_num_epochs,
                stop_after_epochs=recipe.stop_after_epochs,
                show_train_summary=False,
            )
        refinement = None
        if kind == "mnle" and recipe.options.get("choice_simulations"):
            refinement = refine_choice_net(
                net,
                simulator,
                num_simulations=int(recipe.options["choice_simulations"]),
                epochs=int(recipe.options.get("choice_epochs", 8)),
                seed=seed + 1,
                progress=progress,
                client=client,
                workers=workers,
            )
        flow_refinement = None
        if kind == "mnle" and recipe.options.get("flow_simulations"):
            flow_refinement = refine_flow(
                net,
                simulator,
                config,
                num_simulations=int(recipe.options["flow_simulations"]),
                epochs=int(recipe.options.get("flow_epochs", 4)),
                seed=seed + 2,
                progress=progress,
                client=client,
                workers=workers,
            )
    net = net.to("cpu").eval()
    summary = trainer.summary
    metadata = {
        "simulator": simulator.name,
        "simulator_version": simulator.version,
        "kind": kind,
        "parameters": domain_of(simulator),
        "observables": [
            {"name": o.name, "kind": o.kind} for o in simulator.observables
        ],
        "support": support,
        "network": config,
        "recipe": {**dataclasses.asdict(recipe), "seed": seed},
        "training": {
            "num_simulations": len(x_np),
            "epochs": int(summary["epochs_trained"][-1]),
            "best_validation_loss": float(summary["best_validation_loss"][-1]),
            "simulation_seconds": round(simulated - started, 2),
            "training_seconds": round(time.perf_counter() - simulated, 2),
            "device": target.type,
            **({"choice_refinement": refinement} if refinement else {}),
            **({"flow_refinement": flow_refinement} if flow_refinement else {}),
        },
        "versions": package_versions(),
    }
    return TrainedEstimator(
        net,
        metadata,
        theta[:NUM_EXAMPLE_ROWS].clone(),
        x[:NUM_EXAMPLE_ROWS].clone(),
        source="trained",
    )


def refine_choice_net(
    net: torch.nn.Module,
    simulator: Simulator,
    *,
    num_simulations: int,
    epochs: int,
    seed: int,
    batch_size: int = 4096,
    learning_rate: float = 3e-4,
    progress: bool = True,
    client: Any = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Train MNLE's choice net further on fresh simulations of its own.

    The choice net is tiny and simulations are cheap, yet with many trials its small
    errors add up. DDM conditioned on its four raw parameters: 10M more simulations
    cut the error of the learned choice logit threefold (MAE 0.054 to 0.018) for a
    few minutes of training (on `(v a, z)` the main stage alone reaches 0.020). The
    flow is left as it is."""
    theta_np, x_np = simulate_training_data(
        simulator,
        num_simulations,
        seed,
        progress=progress,
        client=client,
        workers=workers,
    )
    theta_np, x_np = drop_invalid(theta_np, x_np)
    made = mnle_parts(net).choice_net
    device = next(made.parameters()).device
    choice = torch.as_tensor(encode_for_network(simulator, x_np)[:, -1]).long()
    choice = choice.to(device)
    theta = torch.as_tensor(theta_np, dtype=torch.float32, device=device)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        logits = first_variable_logits(made, theta[rows])
        return torch.nn.functional.cross_entropy(logits, choice[rows])

    return _refine(
        list(made.parameters()),
        [made],
        loss_of,
        len(theta),
        desc="refining choice net",
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        progress=progress,
    )


def refine_flow(
    net: torch.nn.Module,
    simulator: Simulator,
    config: dict[str, Any],
    *,
    num_simulations: int,
    epochs: int,
    seed: int,
    batch_size: int = 4096,
    learning_rate: float = 2e-4,
    progress: bool = True,
    client: Any = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Train MNLE's flow (and its condition embedding) further on fresh simulations,
    the choice net frozen: the two parts have separate weights and separate terms
    of the loss, so this is the joint objective restricted to the flow.

    With a thousand trials pooled, a parameter's posterior is narrow and the flow's
    small systematic errors show as a shifted mean; more data at a low, decaying
    learning rate shrinks them for little time."""
    theta_np, x_np = simulate_training_data(
        simulator,
        num_simulations,
        seed,
        progress=progress,
        client=client,
        workers=workers,
    )
    theta_np, x_np = drop_invalid(theta_np, x_np)
    theta_np, x_np = subtract_shifts(config, theta_np, x_np)
    device = next(net.parameters()).device
    theta = torch.as_tensor(theta_np, dtype=torch.float32, device=device)
    x = torch.as_tensor(
        encode_for_network(simulator, x_np), dtype=torch.float32, device=device
    )
    parts = mnle_parts(net)
    trained = [parts.flow_estimator, parts.theta_embedding]
    for parameter in parts.choice_estimator.parameters():
        parameter.requires_grad_(False)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        return -net.log_prob(x[rows][None], theta[rows]).mean()

    try:
        return _refine(
            [p for m in trained for p in m.parameters()],
            trained,
            loss_of,
            len(theta),
            desc="refining flow",
            epochs=epochs,
            seed=seed,
            batch_size=batch_size,
            learning_rate=learning_rate,
            progress=progress,
        )
    finally:
        for parameter in parts.choice_estimator.parameters():
            parameter.requires_grad_(True)


def _refine(
    parameters: list[torch.nn.Parameter],
    modules: list[torch.nn.Module],
    loss_of: Any,
    num_rows: int,
    *,
    desc: str,
    epochs: int,
    seed: int,
    batch_size: int,
    learning_rate: float,
    progress: bool,
) -> dict[str, Any]:
    """Adam with a cosine schedule over `epochs` passes, 5% of rows held out."""
    held_out = max(num_rows // 20, 1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_rows, generator=generator)
    train_rows, val_rows = order[held_out:], order[:held_out]
    steps_per_epoch = max(len(train_rows) // batch_size, 1)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    def validation_loss() -> float:
        with torch.no_grad():
            chunks = val_rows.split(65536)
            return sum(float(loss_of(c)) * len(c) for c in chunks) / len(val_rows)

    for module in modules:
        module.train()
    before = validation_loss()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress):
        shuffled = train_rows[torch.randperm(len(train_rows), generator=generator)]
        for step in range(steps_per_epoch):
            loss = loss_of(shuffled[step * batch_size : (step + 1) * batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    for module in modules:
        module.eval()
    after = validation_loss()
    return {
        "num_simulations": num_rows,
        "epochs": epochs,
        "validation_loss_before": round(before, 6),
        "validation_loss_after": round(after, 6),
    }
