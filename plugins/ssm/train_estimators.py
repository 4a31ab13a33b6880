"""Reproduce the estimators shipped in the ssm plugin, one model at a time.

    OMP_NUM_THREADS=1 python plugins/ssm/train_estimators.py [MODEL ...]

Trains each model's recipe (`sbi_plugins_ssm.models.RECIPE`: MNLE, 500,000
simulations) with seed 2025, writes `sbi_plugins_ssm/estimators/MODEL-mnle.pt`, and
records its checksum and held-out figures (mean log-likelihood per trial on 5,000
fresh simulations, in the network's own space, against training's validation value)
in `estimators/manifest.json`. About 5 minutes per model on one core of a 2-core
x86_64 machine; `levy` about 17, 14 of them simulating (one ssm-simulators call
per row: `simulator.NOISE_SHARED_BY_CALL`). Without arguments: every model in
`TO_SHIP`; `--resume` keeps an estimator file already written and only checks and
records it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sbi_plugins_ssm.models import ssm_simulator, ssms_version

from sbi_plugins.check import check_simulator
from sbi_plugins.estimators import artifact
from sbi_plugins.estimators.training import train

TO_SHIP = (
    "angle",
    "ddm_sdv",
    "race_no_bias_3",
    "race_no_z_3",
    "weibull",
    "levy",
    "ornstein",
    "full_ddm",
)
SEED = 2025
HELDOUT = 5000


def ship(name: str, folder: Path, *, resume: bool = False) -> dict:
    simulator = ssm_simulator(name)
    started = time.perf_counter()
    path = folder / f"{name}-mnle.pt"
    if not (resume and path.exists()):
        train(simulator, seed=SEED).save(path, overwrite=True)
    # check what ships: the file, read back as a fit would read it
    estimator = artifact.load(path, simulator)
    report = check_simulator(simulator, estimator=estimator, heldout=HELDOUT, sbc=None)
    (heldout,) = [c for c in report.checks if c.name == "held-out log-likelihood"]
    if "mean" not in heldout.values:
        raise RuntimeError(f"{name}: {heldout.message}")
    return {
        "file": path.name,
        "sha256": estimator.checksum,
        "kib": round(path.stat().st_size / 1024),
        "ssm_simulators": ssms_version(),
        "seed": SEED,
        "training": estimator.metadata["training"],
        "heldout": {
            "status": heldout.status,
            "mean_log_prob": round(heldout.values["mean"], 4),
            "se": round(heldout.values["se"], 4),
            "training_value": round(
                heldout.values.get("training_value", float("nan")), 4
            ),
            "n": heldout.values["n"],
        },
        "seconds": round(time.perf_counter() - started),
    }


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent / "sbi_plugins_ssm" / "estimators"
    manifest_path = folder / "manifest.json"
    resume = "--resume" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name in names or TO_SHIP:
        record = ship(name, folder, resume=resume)
        manifest = json.loads(manifest_path.read_text())
        manifest[name] = record
        manifest_path.write_text(
            json.dumps(dict(sorted(manifest.items())), indent=1) + "\n"
        )
        print(name, json.dumps(record), flush=True)
