"""Network builders, keyed by estimator kind, rebuildable from a JSON config.

Each builder takes a plain-JSON config and example (theta, x) rows and returns an sbi
`ConditionalDensityEstimator`. Training calls it with real data; loading calls it with
the example rows stored in the file, then loads the trained state dict over it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from sbi.neural_nets.estimators import CategoricalMADE, CategoricalMassEstimator
from sbi.neural_nets.net_builders import build_mnle, build_nsf
from sbi.utils.sbiutils import standardizing_net
from torch import Tensor, nn
from torch.nn import functional as F

from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators.reduction import NetworkCondition
from sbi_plugins.estimators.sbi_internals import mnle_parts, replace_choice_net

ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "tanh": torch.tanh}


class LogColumns(nn.Module):
    """Takes the log of the parameter columns marked in `mask` (positive ones), so a
    rate's effect, often multiplicative, becomes nearly linear for the network."""

    def __init__(self, mask: list[bool]) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor(mask, dtype=torch.bool))

    def forward(self, theta: Tensor) -> Tensor:
        return torch.where(self.mask, theta.clamp_min(1e-12).log(), theta)


def theta_embedding(config: dict[str, Any], theta: Tensor) -> nn.Module:
    """The declared parameter products (if any), the log of positive columns, then
    z-scoring."""
    layers: list[nn.Module] = []
    if config.get("condition"):
        layers.append(NetworkCondition(config["condition"]))
        theta = layers[0](theta)
    mask = config.get("log_theta") or [False] * theta.shape[-1]
    logs = LogColumns(mask)
    layers += [logs, standardizing_net(logs(theta), structured_dims=False)]
    return nn.Sequential(*layers)


def _context_features(embedding: nn.Module, theta: Tensor) -> int:
    with torch.no_grad():
        return int(embedding(theta[:2]).shape[-1])


def build_categorical(config: dict[str, Any], theta: Tensor, x: Tensor) -> nn.Module:
    """A categorical mass estimator over counts 0..K-1: a probability for every count,
    so discrete data get a probability, not a density."""
    categories = torch.tensor(config["num_categories"])
    embedding = theta_embedding(config, theta)
    made = CategoricalMADE(
        num_categories=categories,
        num_hidden_features=config["hidden_features"],
        num_context_features=_context_features(embedding, theta),
        num_blocks=config["num_layers"],
        activation=ACTIVATIONS[config.get("activation", "relu")],
        embedding_net=embedding,
    )
    return CategoricalMassEstimator(
        made, input_shape=x[0].shape, condition_shape=theta[0].shape
    )


def build_mixed(config: dict[str, Any], theta: Tensor, x: Tensor) -> nn.Module:
    """MNLE: a categorical net for the choice and a flow for the continuous columns,
    which sbi expects first (continuous columns, then discrete ones)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The mixed neural density")
        mixed = build_mnle(
            batch_x=x,
            batch_y=theta,
            log_transform_x=config.get("log_transform_x", False),
            num_categories_per_variable=torch.tensor(config["num_categories"]),
            hidden_features=config["hidden_features"],
            num_transforms=config["num_transforms"],
            num_bins=config.get("num_bins", 8),
            tail_bound=config.get("tail_bound", 10.0),
            z_score_x="independent",
            z_score_y="none",
            embedding_net=theta_embedding(config, theta),
        )
    activation = config.get("discrete_activation")
    if activation is not None:
        embedding = mnle_parts(mixed).theta_embedding
        # sbi builds the choice net with ReLU; a smooth activation halves its
        # error in the choice logit at the same budget (DDM, 1M simulations)
        categories = torch.tensor(config["num_categories"])
        made = CategoricalMADE(
            num_categories=categories,
            num_hidden_features=config["hidden_features"],
            num_context_features=_context_features(embedding, theta),
            num_blocks=2,
            activation=ACTIVATIONS[activation],
            embedding_net=embedding,
        )
        choice = CategoricalMassEstimator(
            made,
            input_shape=torch.Size([len(categories)]),
            condition_shape=theta[0].shape,
        )
        replace_choice_net(mixed, choice)
    return mixed


def build_flow(config: dict[str, Any], theta: Tensor, x: Tensor) -> nn.Module:
    """A neural spline flow for continuous data."""
    if config.get("condition"):
        raise EstimatorError(
            "a network_condition needs an MNLE or categorical estimator, not 'nsf'"
        )
    return build_nsf(
        batch_x=x,
        batch_y=theta,
        hidden_features=config["hidden_features"],
        num_transforms=config["num_transforms"],
        num_bins=config.get("num_bins", 8),
        z_score_x="independent",
        z_score_y="independent",
    )


BUILDERS = {"categorical": build_categorical, "mnle": build_mixed, "nsf": build_flow}


def build_network(
    kind: str, config: dict[str, Any], theta: Tensor, x: Tensor
) -> nn.Module:
    if kind not in BUILDERS:
        raise EstimatorError(
            f"unknown estimator kind {kind!r}; known kinds: {', '.join(BUILDERS)}"
        )
    return BUILDERS[kind](config, theta.float(), x.float())
