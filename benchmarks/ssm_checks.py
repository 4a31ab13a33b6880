"""`sbi-plugins check` with simulation-based calibration for every shipped model.

    python benchmarks/ssm_checks.py [MODEL ...] [--datasets 30 --trials 20]
                                    [--json checks.json]

What `sbi-plugins check MODEL` runs (contract, the shipped estimator on fresh
simulations, SBC of the non-hierarchical model), for the ssm plugin's shipped
models and the DDM, one after the other in this process. Prints one line per model:
checks passed, the smallest SBC p-value with the threshold it is held to, the
held-out log-likelihood against training's, and the wall time; `--json` writes
every report (`CheckReport.to_dict`) for the docs' catalogue table. CI runs the
same check on one model per kind (tests/test_ssm.py); this is the whole catalogue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings

from sbi_plugins_ssm import SHIPPED

from sbi_plugins.check import SbcSettings, check_simulator
from sbi_plugins.check.report import FAIL, PASS


def sbc_line(report) -> str:
    """Smallest SBC p-value over the parameters, and the threshold."""
    ranks = [c for c in report.checks if "ranks" in c.values]
    if not ranks:
        return "SBC not run"

    def p_min(check) -> float:
        return min(check.values["chi2_p"], check.values["ks_p"])

    worst = min(ranks, key=p_min)
    return (
        f"SBC {sum(c.status == PASS for c in ranks)}/{len(ranks)} parameters, "
        f"min p {p_min(worst):.3f} ({worst.name}; fails below "
        f"{worst.values['threshold']:.4f})"
    )


def heldout_line(report) -> str:
    held = [c for c in report.checks if c.name == "held-out log-likelihood"]
    if not held:
        return "no held-out check"
    values = held[0].values
    return f"held-out {values['mean']:.3f} (training {values['training_value']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["ddm", *SHIPPED])
    parser.add_argument("--datasets", type=int, default=30)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--json", help="write every report here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    settings = SbcSettings(datasets=args.datasets, trials=args.trials)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; SBC "
        f"{settings.describe()}",
        flush=True,
    )
    reports = {}
    for model in args.models:
        report = check_simulator(model, sbc=settings, seed=0)
        reports[model] = report.to_dict()
        passed = sum(c.status != FAIL for c in report.checks)
        failed = ", ".join(f"{c.section}/{c.name}" for c in report.failed)
        print(
            f"{model:>16}: {passed}/{len(report.checks)} checks pass"
            f"{' (FAILED ' + failed + ')' if failed else ''}; {sbc_line(report)}; "
            f"{heldout_line(report)}; {report.seconds:.0f} s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=1)


if __name__ == "__main__":
    main()
