"""The large regression study HDDM users report: neural and exact fits side by side.

    python benchmarks/large_study.py [--subjects 150 --trials 120]
        [--draws 1000 --tune 1000 --chains 4] [--likelihoods neural exact]
        [--methods nuts vi] [--keep DIR]

Simulated data of that shape: `--subjects` subjects x 2 conditions x `--trials`
trials per condition (150 x 2 x 120 = 36,000 trials by default), with

    v ~ 1 + C(cond) + (1 + C(cond)|participant_id)
    a ~ 1 + (1|participant_id)
    t ~ 1 + (1|participant_id)
    z common

Each fit runs in a fresh process so its peak memory (PSS of the process tree,
`memory.PeakMemory`) is its own. Printed per fit: wall time, min bulk ESS, max
r-hat, divergences, leapfrog steps per draw, peak memory, the netCDF size on disk,
and the condition effect's recovery (posterior mean, sd, 94% HDI against the truth,
and against this sample's mean effect: with few subjects the subjects' slopes
move it away from the population's).

`--methods nuts vi` also fits each likelihood with `method="vi"` and compares its
draws with that likelihood's NUTS posterior: every population-level and
subject-level mean's distance from NUTS's, in NUTS posterior sd, and the ratio of
the sds (VI under-disperses). `--keep DIR` keeps each fit's netCDF there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from memory import PeakMemory

FORMULAS = {
    "v": "v ~ 1 + C(cond) + (1 + C(cond)|participant_id)",
    "a": "a ~ 1 + (1|participant_id)",
    "t": "t ~ 1 + (1|participant_id)",
}
EFFECT = -0.5
"""The condition effect on v's link scale (`v_C(cond)` at level "b")."""
EFFECT_NAME, EFFECT_LEVEL = "v_C(cond)", "b"


def study(subjects: int, trials: int, seed: int = 0) -> pd.DataFrame:
    """Trials from the formula model itself, on each parameter's link scale:
    v = link(0.4 + EFFECT*[cond b] + u0_s + u1_s*[cond b]), a = link(a0 + ua_s),
    t = link(t0 + ut_s), z = 0.5."""
    import sbi_plugins
    from sbi_plugins.model.formulas import inverse_link, link

    ddm = sbi_plugins.get_simulator("ddm")
    bounds = {p.name: (p.lower, p.upper) for p in ddm.parameters}

    def natural(name: str, eta: np.ndarray) -> np.ndarray:
        import torch

        return link(torch.as_tensor(eta), *bounds[name]).numpy()

    rng = np.random.default_rng(seed)
    u0, u1 = rng.normal(0, 0.3, subjects), rng.normal(0, 0.2, subjects)
    a0, t0 = inverse_link(1.2, *bounds["a"]), inverse_link(0.3, *bounds["t"])
    a = natural("a", a0 + rng.normal(0, 0.2, subjects))
    t = natural("t", t0 + rng.normal(0, 0.2, subjects))
    frames = []
    for s in range(subjects):
        for cond, hard in (("a", 0.0), ("b", 1.0)):
            v = natural("v", np.array(0.4 + (EFFECT + u1[s]) * hard + u0[s]))
            theta = np.tile([float(v), a[s], 0.5, t[s]], (trials, 1))
            x = ddm.simulate(theta, rng)
            frames.append(
                pd.DataFrame(
                    {
                        "participant_id": f"s{s:03d}",
                        "cond": cond,
                        "rt": x[:, 0],
                        "response": x[:, 1].astype(int),
                    }
                )
            )
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["sample_effect"] = EFFECT + float(u1.mean())
    return frame


def one_fit(args: argparse.Namespace, likelihood: str, method: str) -> dict:
    import arviz as az

    import sbi_plugins

    warnings.simplefilter("ignore")
    trials = study(args.subjects, args.trials)
    start = time.perf_counter()
    with PeakMemory() as peak:
        fit = sbi_plugins.fit(
            trials,
            "ddm",
            group="participant_id",
            formulas=FORMULAS,
            pooling="complete",
            likelihood=likelihood,
            method=method,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=1,
            progress=args.progress,
            refine=False,  # the sampler's cost; benchmarks/refinement.py: refined
        )
    wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.keep or folder) / f"{likelihood}-{method}.nc"
        fit.to_netcdf(path)
        disk_mib = path.stat().st_size / 2**20
    names = [v for v in fit.posterior.data_vars if not v.endswith("_offset")]
    summary = az.summary(fit, var_names=names, round_to="none")
    effect = fit.posterior[EFFECT_NAME].sel({f"{EFFECT_NAME}_dim": EFFECT_LEVEL})
    low, high = az.hdi(effect, hdi_prob=0.94)[EFFECT_NAME].values
    stats = fit.sample_stats
    steps = stats.get("n_steps")
    return {
        "likelihood": likelihood,
        "method": method,
        "moments": {n: [summary["mean"][n], summary["sd"][n]] for n in summary.index},
        "rows": len(trials),
        "wall_s": round(wall, 1),
        "min_ess_bulk": round(float(summary["ess_bulk"].min())),
        "max_r_hat": round(float(summary["r_hat"].max()), 4),
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
        "steps_per_draw": None if steps is None else round(float(steps.mean()), 1),
        "vi_steps": fit.posterior.attrs.get("vi_steps"),
        "peak_mib": round(peak.mib),
        "netcdf_mib": round(disk_mib, 1),
        "effect": [round(float(effect.mean()), 3), round(float(effect.std()), 3)],
        "effect_hdi": [round(float(low), 3), round(float(high), 3)],
        "sample_effect": round(trials.attrs["sample_effect"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--trials", type=int, default=120, help="per condition")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--likelihoods", nargs="+", default=["neural", "exact"])
    parser.add_argument("--methods", nargs="+", default=["nuts"])
    parser.add_argument("--keep", help="keep each fit's netCDF in this folder")
    parser.add_argument("--progress", action="store_true", help="fits' progress bars")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        likelihood, method = args.child.split(":")
        print(json.dumps(one_fit(args, likelihood, method)))
        return
    rows = args.subjects * 2 * args.trials
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.subjects} "
        f"subjects x 2 conditions x {args.trials} trials = {rows} rows; "
        f"{args.chains} chains x ({args.tune} + {args.draws}); truth {EFFECT_NAME} "
        f"= {EFFECT}"
    )
    passed = [f"--{k}={getattr(args, k)}" for k in ("subjects", "trials", "draws")]
    passed += [f"--tune={args.tune}", f"--chains={args.chains}"]
    passed += [f"--keep={args.keep}"] if args.keep else []
    passed += ["--progress"] if args.progress else []
    results: dict[tuple[str, str], dict] = {}
    for likelihood in args.likelihoods:
        for method in args.methods:
            child = ["--child", f"{likelihood}:{method}"]
            command = [sys.executable, __file__, *passed, *child]
            errors = None if args.progress else subprocess.PIPE  # bars to stderr
            out = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=errors, text=True
            )
            if out.returncode:
                print(f"{likelihood} {method}: failed\n{(out.stderr or '')[-3000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[likelihood, method] = r
            print_fit(r)
            if method != "nuts" and (likelihood, "nuts") in results:
                print_against_nuts(r, results[likelihood, "nuts"])


def print_fit(r: dict) -> None:
    mean, sd = r["effect"]
    how = (
        f"{r['steps_per_draw']} steps/draw"
        if r["method"] == "nuts"
        else f"{r['vi_steps']} SVI steps"
    )
    print(
        f"{r['likelihood']:>6} {r['method']}: {r['wall_s']:7.1f} s wall, min ESS "
        f"{r['min_ess_bulk']}, max r-hat {r['max_r_hat']}, {r['divergences']} "
        f"divergences, {how}, peak {r['peak_mib']} MiB, netCDF "
        f"{r['netcdf_mib']} MiB; effect {mean:+.3f} +- {sd:.3f}, 94% HDI "
        f"{r['effect_hdi']}, truth at {(EFFECT - mean) / sd:+.2f} sd (this "
        f"sample's mean effect {r['sample_effect']:+.3f} at "
        f"{(r['sample_effect'] - mean) / sd:+.2f} sd)",
        flush=True,
    )


def print_against_nuts(r: dict, nuts: dict) -> None:
    """Each mean's distance from NUTS's in NUTS sd, and the sd ratios, for the
    population-level entries (fixed effects, z, the group sds) and the
    subject-level ones (indexed by participant)."""
    for level, keep in (("population", False), ("subject", True)):
        gaps, ratios = [], []
        for name, (mean, sd) in r["moments"].items():
            by_subject = "|participant_id[" in name
            if by_subject != keep or name not in nuts["moments"]:
                continue
            ref_mean, ref_sd = nuts["moments"][name]
            gaps.append((abs(mean - ref_mean) / ref_sd, name))
            ratios.append(sd / ref_sd)
        if gaps:
            worst = max(gaps)
            print(
                f"    {level}-level vs NUTS ({len(gaps)} entries): worst mean gap "
                f"{worst[0]:.2f} sd ({worst[1]}), median "
                f"{float(np.median([g for g, _ in gaps])):.2f} sd; sd ratio "
                f"{min(ratios):.2f}-{max(ratios):.2f} (median "
                f"{float(np.median(ratios)):.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
