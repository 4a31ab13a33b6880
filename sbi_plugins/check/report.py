"""The report of `sbi-plugins check`: one `Check` per line, its status, and how it is
rendered for a reader (`format`) and for CI (`to_dict`, plain JSON)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
EXIT_FAILED = 1
"""Exit status of `sbi-plugins check` when a check fails (2 stays a usage error)."""


@dataclass
class Check:
    """One line of the report."""

    section: str
    name: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """All checks of one simulator; `ok` when none failed."""

    simulator: str
    version: str
    plugin: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(
        self, section: str, name: str, status: str, message: str, **values: Any
    ) -> Check:
        check = Check(section, name, status, message, values)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (NaN and infinities become null), for CI."""
        return _plain(
            {
                "simulator": self.simulator,
                "version": self.version,
                "plugin": self.plugin,
                "ok": self.ok,
                "failed": [f"{c.section}/{c.name}" for c in self.failed],
                "seconds": round(self.seconds, 2),
                "checks": [dataclasses.asdict(c) for c in self.checks],
            }
        )

    def format(self) -> str:
        """The readable report: one line per check, grouped by section."""
        lines = [
            f"sbi-plugins check {self.simulator} (version {self.version}, "
            f"{self.plugin})"
        ]
        section = None
        for c in self.checks:
            if c.section != section:
                section = c.section
                lines.append(f"\n{section}")
            lines.append(f"  {c.status.upper():<5} {c.name}: {c.message}")
        counts = {s: sum(c.status == s for c in self.checks) for s in (WARN, SKIP)}
        tail = f"{counts[WARN]} warnings, {counts[SKIP]} skipped"
        if self.ok:
            verdict = f"all {len(self.checks) - counts[SKIP]} checks passed ({tail})"
        else:
            names = ", ".join(f"{c.section}/{c.name}" for c in self.failed)
            verdict = f"FAILED: {names} ({tail})"
        lines.append(f"\n{verdict} in {self.seconds:.1f} s")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as JSON's own types; non-finite floats as None, since
    strict JSON (`allow_nan=False`) has no NaN."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value
