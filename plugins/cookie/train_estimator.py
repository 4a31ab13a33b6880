"""Reproduce the cookie estimator shipped in the package.

    python plugins/cookie/train_estimator.py

Trains the plugin's RECIPE (1,000,000 simulations, 20 epochs) with seed 2025, about
3 minutes on 2 cores; writes `sbi_plugins_cookie/cookie-categorical.pt` and records
its checksum in `sbi_plugins_cookie/__init__.py`.
"""

from pathlib import Path

from sbi_plugins_cookie import COOKIE, ESTIMATOR_FILE

from sbi_plugins.estimators.shipping import ship_estimator

if __name__ == "__main__":
    package = Path(__file__).resolve().parent / "sbi_plugins_cookie"
    ship_estimator(COOKIE, package, ESTIMATOR_FILE, seed=2025)
