"""For plugin authors: train the recipe and write the estimator a package ships."""

from __future__ import annotations

import re
from pathlib import Path

from sbi_plugins.contract import Simulator
from sbi_plugins.estimators.artifact import TrainedEstimator
from sbi_plugins.estimators.training import train

CHECKSUM_LINE = re.compile(r'ESTIMATOR_SHA256 = "[0-9a-f]{64}"')


def ship_estimator(
    simulator: Simulator, package_dir: str | Path, filename: str, *, seed: int
) -> TrainedEstimator:
    """Train `simulator.recipe` with `seed`, write `package_dir/filename`, and record
    its checksum in the package's `ESTIMATOR_SHA256 = "..."` line."""
    package_dir = Path(package_dir)
    init = package_dir / "__init__.py"
    source = init.read_text()
    if not CHECKSUM_LINE.search(source):
        raise ValueError(f'{init} has no line ESTIMATOR_SHA256 = "<64 hex digits>"')
    estimator = train(simulator, recipe=simulator.recipe, seed=seed)
    path = estimator.save(package_dir / filename, overwrite=True)
    init.write_text(
        CHECKSUM_LINE.sub(f'ESTIMATOR_SHA256 = "{estimator.checksum}"', source)
    )
    estimator.source = str(path)
    size = path.stat().st_size / 1024
    print(f"wrote {path} ({size:.0f} KiB), sha256 {estimator.checksum}")
    print(estimator.metadata["training"])
    return estimator
