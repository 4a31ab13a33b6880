"""A benchmark script run on an earlier checkout and on this one, alternately, in one
run: the before/after figures of a refactoring (issue 17) on the same machine and
load.

    git worktree add /tmp/baseline <commit>
    python benchmarks/against_baseline.py /tmp/baseline ddm_hierarchical.py \
        --rounds 2 -- --seeds 2025

Each round runs the baseline's copy of the script with the baseline's package first
on the path, then this checkout's; the scripts' own output is printed with a prefix,
and the wall time of each run is summed per side. Plugins come from the installed
environment (the same for both sides).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run(tree: Path, script: str, arguments: list[str], label: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / script), *arguments],
        env=env,
        cwd=tree / "benchmarks",
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    for line in process.stdout.splitlines():
        print(f"[{label}] {line}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", type=Path, help="checkout of the earlier commit")
    parser.add_argument("script", help="a script in benchmarks/, e.g. gradient_cost.py")
    parser.add_argument("--rounds", type=int, default=1)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, arguments = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    totals = {"before": 0.0, "after": 0.0}
    for r in range(args.rounds):
        for label, tree in (("before", args.baseline.resolve()), ("after", HERE)):
            seconds = run(tree, args.script, arguments, f"{label} {r}")
            totals[label] += seconds
            print(f"[{label} {r}] whole run {seconds:.1f} s", flush=True)
    print(
        f"{args.script}: before {totals['before']:.1f} s, after {totals['after']:.1f} "
        f"s in all, after / before {totals['after'] / totals['before']:.3f}"
    )


if __name__ == "__main__":
    main()
