"""The estimator file format: safe reading and the content checksum.

This sits beside the contract, below the registry, and imports neither sbi nor the
network builders: `sbi-plugins list` verifies the files plugins ship (a wrong
checksum marks the plugin as failed) without paying for sbi's import.
`torch.load(weights_only=True)` refuses anything but tensors and plain containers,
so a hostile file cannot run code; the checksum catches corrupted or edited bytes.
"""

from __future__ import annotations

import hashlib
import io
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from sbi_plugins.errors import EstimatorError

FORMAT = "sbi-plugins-estimator"
FORMAT_VERSION = 1


def content_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over the metadata JSON and every tensor's name, dtype, shape, bytes."""
    digest = hashlib.sha256()
    digest.update(f"{payload['format']}/{payload['format_version']}\n".encode())
    digest.update(payload["metadata"].encode())
    tensors = {f"state_dict.{k}": v for k, v in payload["state_dict"].items()}
    tensors["example_theta"] = payload["example_theta"]
    tensors["example_x"] = payload["example_x"]
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def read_payload(
    path: str | Path | Traversable, *, expected_sha256: str | None = None
) -> tuple[dict[str, Any], str]:
    """Read an estimator file without executing code and verify its checksums: the
    one recorded in the file and, given, the one its plugin registered. Returns the
    payload and its checksum; every refusal names the file and the failed check."""
    if isinstance(path, str):
        path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EstimatorError(f"{name}: cannot read estimator file ({exc})") from exc
    try:
        payload = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise EstimatorError(
            f"{name}: not a loadable estimator file (check failed: safe weights-only "
            f"load; the file is truncated, corrupted or not an sbi-plugins estimator: "
            f"{type(exc).__name__}). Retrain it with `sbi-plugins train`"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EstimatorError(f"{name}: not an sbi-plugins estimator file (format)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise EstimatorError(
            f"{name}: estimator format version {payload.get('format_version')} is not "
            f"supported (this release reads version {FORMAT_VERSION}); retrain it"
        )
    try:
        actual = content_checksum(payload)
    except (KeyError, AttributeError, TypeError) as exc:
        raise EstimatorError(
            f"{name}: not an sbi-plugins estimator file (check failed: content "
            f"layout, {type(exc).__name__}: {exc})"
        ) from exc
    if payload.get("sha256") != actual:
        raise EstimatorError(
            f"{name}: checksum check failed: the content does not match the SHA-256 "
            "recorded in the file (corrupted or edited); retrain or reinstall it"
        )
    if expected_sha256 is not None and expected_sha256 != actual:
        raise EstimatorError(
            f"{name}: checksum check failed: its SHA-256 {actual[:12]}... differs from "
            f"the {expected_sha256[:12]}... its plugin registered; reinstall the plugin"
        )
    return payload, actual
