"""Estimator files: a JSON config plus weights, loaded without executing code.

A file holds the metadata (simulator, parameters and their training box, observables
and the support seen in training, network config, training recipe), the state dict,
a few example rows (to rebuild the network's shapes) and a SHA-256 over all of it.
`torch.load(weights_only=True)` refuses anything but tensors and plain containers, so
a hostile file cannot run code; the checksum catches corrupted or edited bytes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import EstimatorError
from sbi_plugins.estimators.format import (
    FORMAT,
    FORMAT_VERSION,
    content_checksum,
    read_payload,
)


@dataclass
class TrainedEstimator:
    """A trained sbi estimator with the metadata that says where it is valid."""

    net: torch.nn.Module
    metadata: dict[str, Any]
    example_theta: torch.Tensor
    example_x: torch.Tensor
    source: str = "memory"
    _checksum: str | None = field(default=None, repr=False)

    @property
    def simulator(self) -> str:
        return self.metadata["simulator"]

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def support(self) -> dict[str, list[float]]:
        """Per observable, the [min, max] seen in training."""
        return self.metadata["support"]

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = content_checksum(self._payload())
        return self._checksum

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metadata": json.dumps(self.metadata, sort_keys=True),
            "state_dict": {
                k: v.detach().cpu().contiguous()
                for k, v in self.net.state_dict().items()
            },
            "example_theta": self.example_theta.detach().cpu().contiguous(),
            "example_x": self.example_x.detach().cpu().contiguous(),
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the file atomically; an existing file is kept unless `overwrite`."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise EstimatorError(
                f"{path} exists; choose another path or delete it first"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = self._payload()
        payload["sha256"] = content_checksum(payload)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def load(
    path: str | Path | Traversable,
    simulator: Simulator | None = None,
    *,
    expected_sha256: str | None = None,
) -> TrainedEstimator:
    """Read an estimator file, verify its checksum and (given a simulator) that it
    was trained for that simulator's parameters, domain and observables."""
    from sbi_plugins.estimators.networks import build_network

    name = str(path)
    payload, actual = read_payload(path, expected_sha256=expected_sha256)
    metadata = payload["metadata"]  # validated by read_payload
    try:
        net = build_network(
            metadata["kind"],
            metadata["network"],
            payload["example_theta"],
            payload["example_x"],
        )
    except EstimatorError as exc:
        raise EstimatorError(f"{name}: {exc}") from exc
    except Exception as exc:
        # the network config is free-form per kind: a missing or mistyped entry
        # surfaces as whatever the builder raises; say which file and retrain
        raise EstimatorError(
            f"{name}: malformed estimator metadata: its network config cannot be "
            f"built ({type(exc).__name__}: {exc}); retrain it with `sbi-plugins "
            "train`"
        ) from exc
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise EstimatorError(
            f"{name}: weights do not fit the network its config describes: {exc}"
        ) from exc
    net.eval()
    estimator = TrainedEstimator(
        net,
        metadata,
        payload["example_theta"],
        payload["example_x"],
        source=name,
        _checksum=actual,
    )
    if simulator is not None:
        check_matches(estimator, simulator)
    return estimator


def domain_of(simulator: Simulator) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "lower": p.lower, "upper": p.upper}
        for p in simulator.parameters
    ]


def check_matches(estimator: TrainedEstimator, simulator: Simulator) -> None:
    """Refuse an estimator trained for another simulator, parameters or domain."""
    meta, where = estimator.metadata, estimator.source
    retrain = f"retrain with `sbi-plugins train {simulator.name}`"
    if meta["simulator"] != simulator.name:
        raise EstimatorError(
            f"{where}: estimator was trained for simulator {meta['simulator']!r}, "
            f"not {simulator.name!r}"
        )
    if meta.get("simulator_version") != simulator.version:
        raise EstimatorError(
            f"{where}: estimator was trained on {simulator.name} version "
            f"{meta.get('simulator_version')}, installed is {simulator.version}; "
            f"{retrain}"
        )
    trained = meta["parameters"]
    wanted = domain_of(simulator)
    if [p["name"] for p in trained] != [p["name"] for p in wanted]:
        raise EstimatorError(
            f"{where}: estimator parameters {[p['name'] for p in trained]} differ from "
            f"the simulator's {[p['name'] for p in wanted]}; {retrain}"
        )
    for t, w in zip(trained, wanted, strict=True):
        same = math.isclose(t["lower"], w["lower"], rel_tol=1e-9, abs_tol=1e-12)
        same = same and math.isclose(
            t["upper"], w["upper"], rel_tol=1e-9, abs_tol=1e-12
        )
        if not same:
            raise EstimatorError(
                f"{where}: training domain of {w['name']!r} is [{t['lower']}, "
                f"{t['upper']}] but the simulator declares [{w['lower']}, "
                f"{w['upper']}]; {retrain}"
            )
    observables = [[o["name"], o["kind"]] for o in meta["observables"]]
    expected = [[o.name, o.kind] for o in simulator.observables]
    if observables != expected:
        raise EstimatorError(
            f"{where}: estimator observables {observables} differ from the "
            f"simulator's {expected}; {retrain}"
        )
