# sbi-plugins-signal/train_estimator.py
"""Train the signal plugin's recipe and write the estimator the package ships.

    cd sbi-plugins-signal && python train_estimator.py

Simulates the recipe's 50,000 trials from the training prior, trains the neural
spline flow with seed 2025 (about half a minute on one core), writes
`sbi_plugins_signal/signal-nsf.pt` and records its checksum in the
`ESTIMATOR_SHA256 = "..."` line of `sbi_plugins_signal/__init__.py`.
"""

from pathlib import Path

from sbi_plugins.estimators.shipping import ship_estimator

if __name__ == "__main__":
    from sbi_plugins_signal import ESTIMATOR_FILE, SIGNAL

    package = Path(__file__).resolve().parent / "sbi_plugins_signal"
    ship_estimator(SIGNAL, package, ESTIMATOR_FILE, seed=2025)
