"""The estimator file format: safe reading and the content checksum.

This sits beside the contract, below the registry, and imports neither sbi nor the
network builders: `sbi-plugins list` verifies the files plugins ship (a wrong
checksum marks the plugin as failed) without paying for sbi's import.
`torch.load(weights_only=True)` refuses anything but tensors and plain containers,
so a hostile file cannot run code; the checksum catches corrupted or edited bytes.
The metadata is validated here too, once, so that every reader (loading, the cache,
`sbi-plugins list`) refuses a file whose checksum is right but whose metadata is not
what `train` writes, with one message naming the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from sbi_plugins.contract import OBSERVABLE_KINDS
from sbi_plugins.errors import EstimatorError

FORMAT = "sbi-plugins-estimator"
FORMAT_VERSION = 1
ESTIMATOR_KINDS = ("categorical", "mnle", "nsf")
"""The network kinds a file may declare (the builders in `estimators.networks`)."""


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
    payload["metadata"] = parse_metadata(payload["metadata"], name)
    for key in ("example_theta", "example_x"):
        if payload[key].ndim != 2 or len(payload[key]) == 0:
            raise EstimatorError(
                f"{name}: malformed estimator file: {key} has shape "
                f"{tuple(payload[key].shape)}, expected rows x columns; retrain it"
            )
    return payload, actual


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(metadata: Any) -> str | None:
    """What is wrong with parsed metadata, or None: the fields the loader and the
    likelihood read, with the types `train` writes."""
    if not isinstance(metadata, dict):
        return f"metadata is a JSON {type(metadata).__name__}, expected an object"
    expected = {
        "simulator": str,
        "simulator_version": str,
        "kind": str,
        "parameters": list,
        "observables": list,
        "support": dict,
        "network": dict,
        "recipe": dict,
        "training": dict,
    }
    missing = [key for key in expected if key not in metadata]
    if missing:
        return f"metadata lacks {', '.join(repr(k) for k in missing)}"
    for key, kind in expected.items():
        if not isinstance(metadata[key], kind):
            return (
                f"metadata {key!r} is {type(metadata[key]).__name__} "
                f"{metadata[key]!r:.60}, expected {kind.__name__}"
            )
    if metadata["kind"] not in ESTIMATOR_KINDS:
        return (
            f"unknown estimator kind {metadata['kind']!r} (this release builds "
            f"{', '.join(ESTIMATOR_KINDS)})"
        )
    if not metadata["parameters"]:
        return "metadata 'parameters' is empty"
    for i, p in enumerate(metadata["parameters"]):
        if not (
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and _is_number(p.get("lower"))
            and _is_number(p.get("upper"))
            and math.isfinite(p["lower"])
            and math.isfinite(p["upper"])
            and p["lower"] < p["upper"]
        ):
            return (
                f"metadata parameters[{i}] is {p!r:.80}, expected "
                '{"name": str, "lower": number, "upper": number} with lower < upper'
            )
    if not metadata["observables"]:
        return "metadata 'observables' is empty"
    for i, o in enumerate(metadata["observables"]):
        if not (
            isinstance(o, dict)
            and isinstance(o.get("name"), str)
            and o.get("kind") in OBSERVABLE_KINDS
        ):
            return (
                f"metadata observables[{i}] is {o!r:.80}, expected "
                f'{{"name": str, "kind": one of {", ".join(OBSERVABLE_KINDS)}}}'
            )
    for o in metadata["observables"]:
        seen = metadata["support"].get(o["name"])
        if not (
            isinstance(seen, list)
            and len(seen) == 2
            and all(_is_number(v) and not math.isnan(v) for v in seen)
        ):
            return (
                f"metadata support of {o['name']!r} is {seen!r:.60}, expected "
                "[min, max] seen in training"
            )
    return None


def parse_metadata(text: Any, name: str) -> dict[str, Any]:
    """The file's metadata as a dict, or an EstimatorError naming the file and what
    is wrong: the one place a file's metadata is checked, so that no reader meets a
    KeyError or a JSON error later."""
    if not isinstance(text, str):
        problem = f"metadata is {type(text).__name__}, expected a JSON string"
    else:
        try:
            metadata = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"metadata is not valid JSON ({exc})"
        else:
            problem = _problem(metadata)
    if problem:
        raise EstimatorError(
            f"{name}: malformed estimator metadata: {problem}; retrain it with "
            "`sbi-plugins train`"
        )
    return metadata
