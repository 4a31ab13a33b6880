"""Reproduce the DDM estimator shipped in the package.

    OMP_NUM_THREADS=1 python plugins/ddm/train_estimator.py

Trains the plugin's RECIPE (MNLE on (v a, z) and (rt - t) / a**2, 1,000,000
simulations, 20 epochs) with seed 2025, about 9 minutes on one core of a 2-core
x86_64 machine; writes
`sbi_plugins_ddm/ddm-mnle.pt` and records its checksum in `sbi_plugins_ddm/__init__.py`.
The recipe, seed, epochs and validation loss travel in the file's metadata.
"""

from pathlib import Path

from sbi_plugins_ddm import DDM, ESTIMATOR_FILE

from sbi_plugins.estimators.shipping import ship_estimator

if __name__ == "__main__":
    package = Path(__file__).resolve().parent / "sbi_plugins_ddm"
    ship_estimator(DDM, package, ESTIMATOR_FILE, seed=2025)
