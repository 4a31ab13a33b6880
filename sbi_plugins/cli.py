"""`sbi-plugins`: argument parsing, messages and exit codes; no logic of its own.

A user error prints one line, `sbi-plugins: error: ...`, and exits with status 2; no
traceback. An output is checked before any work and never replaces a file, even one
that appeared while the command ran (see `sbi_plugins.outputs`).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from sbi_plugins.errors import DataError, SbiPluginsError
from sbi_plugins.inference.base import MASS_MATRICES, METHODS
from sbi_plugins.keywords import FOREIGN_FLAGS
from sbi_plugins.outputs import Terminated, terminate_as_interrupt

EXIT_USAGE = 2


class CliError(SbiPluginsError):
    """A bad command line."""


LOG_LIKELIHOOD = {"float32": True, "float64": "float64", "none": False}
"""`--log-likelihood` choices and the `fit(log_likelihood=...)` each stands for."""


def parse_pooling(text: str) -> str | dict[str, str]:
    """`partial`, or per parameter: `v=partial,a=complete`."""
    if "=" not in text:
        return text
    spec = {}
    for item in text.split(","):
        name, sep, mode = item.partition("=")
        if not sep or not name.strip() or not mode.strip():
            raise CliError(
                f"cannot read pooling {text!r}: write a mode (partial, none, complete) "
                "or name=mode pairs such as v=partial,a=complete"
            )
        spec[name.strip()] = mode.strip()
    return spec


def parse_p_outlier(text: str | None) -> float | bool | None:
    """`--p-outlier 0.05` fixes the lapse share; `--p-outlier estimate` gives it a
    prior and samples it."""
    if text is None:
        return None
    if text.strip().lower() in ("estimate", "true", "prior"):
        return True
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0 <= share < 1:
        raise CliError(
            f"cannot read --p-outlier {text!r}: give a share in [0, 1) such as 0.05 "
            "(0: no lapses), or 'estimate' to sample it"
        )
    return share or None


def parse_deadline(text: str | None) -> float | str | None:
    """`--deadline 1.5` (seconds for every trial) or `--deadline deadline` (a
    column of per-trial deadlines); the data checks judge either."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_refine(text: str) -> str | bool | int:
    """`--refine auto|on|off|N` (N: at most N rounds)."""
    word = text.strip().lower()
    if word == "auto":
        return "auto"
    if word in ("on", "yes", "true"):
        return True
    if word in ("off", "no", "false", "0"):
        return False
    if word.isdigit():
        return int(word)
    raise CliError(
        f"cannot read --refine {text!r}: give auto (refine from 2000 rows), on, off "
        "or a number of rounds such as 2"
    )


def _refuse_existing(path: Path) -> None:
    """Before any work: an output that exists or cannot be written is refused."""
    from sbi_plugins.outputs import check_new_file

    check_new_file(path)


def cmd_list(args: argparse.Namespace) -> int:
    from sbi_plugins.plugin.registry import list_plugins

    if args.simulators:
        return _describe_simulators(args.simulators, args.json)
    plugins = list_plugins()
    if args.json:
        print(json.dumps([p.to_dict() for p in plugins], indent=2))
        return 0
    for p in plugins:
        status = "ok" if p.ok else "FAILED"
        origin = " ".join(filter(None, [p.distribution or "local", p.version]))
        print(f"{p.name} ({origin}) [{status}]")
        for label, items in (
            ("simulators", p.simulators),
            ("prior families", p.priors),
            ("estimators", p.estimators),
        ):
            if items:
                print(f"  {label}: {', '.join(items)}")
        for error in p.errors:
            print(f"  error: {error}")
    return 0


def _describe_simulators(names: list[str], as_json: bool) -> int:
    """What a user needs before fitting a simulator: its parameters with the
    boxes its estimator knows, its data columns, and whether an estimator ships
    (else the first fit trains one and caches it)."""
    from sbi_plugins.estimators.resolve import cache_path
    from sbi_plugins.plugin.registry import get_registry, get_simulator

    described = []
    for name in names:
        sim = get_simulator(name)
        shipped = bool(get_registry().estimator_artifacts(sim.name))
        described.append(
            {
                "name": sim.name,
                "version": sim.version,
                "description": sim.description,
                "parameters": {
                    p.name: {"lower": p.lower, "upper": p.upper} for p in sim.parameters
                },
                "columns": {
                    o.name: o.kind
                    + (f" {', '.join(f'{c:g}' for c in o.codes)}" if o.codes else "")
                    for o in sim.observables
                },
                "estimator": "shipped"
                if shipped
                else "cached"
                if cache_path(sim).exists()
                else "trained on first use (then cached)",
            }
        )
    if as_json:
        print(json.dumps(described, indent=2))
        return 0
    for d in described:
        print(f"{d['name']} (version {d['version']}): {d['description']}".rstrip(": "))
        for p, box in d["parameters"].items():
            print(f"  {p:<10} [{box['lower']:g}, {box['upper']:g}]")
        print(f"  columns: {'; '.join(f'{k} ({v})' for k, v in d['columns'].items())}")
        print(f"  estimator: {d['estimator']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from sbi_plugins.contract import EstimatorRecipe
    from sbi_plugins.estimators import train
    from sbi_plugins.estimators.resolve import cache_path
    from sbi_plugins.estimators.training import training_recipe
    from sbi_plugins.plugin.registry import get_simulator

    simulator = get_simulator(args.simulator)
    # every recipe option given on the command line (--num-simulations, and any
    # recipe field the parser gains) keys the cache file: no stand-in for the default
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EstimatorRecipe)
        if getattr(args, f.name, None) is not None
    }
    recipe = training_recipe(simulator, **overrides)
    out = Path(args.out) if args.out else cache_path(simulator, recipe)
    if args.out:
        _refuse_existing(out)
    else:
        from sbi_plugins.outputs import check_writable_dir

        check_writable_dir(
            out.parent, out, instead="set SBI_PLUGINS_CACHE_DIR or give --out"
        )
    estimator = train(
        simulator,
        recipe=recipe,
        seed=args.seed,
        progress=not args.no_progress,
        client=args.scheduler,
        workers=args.workers,
        device=args.device,
    )
    if args.out:
        from sbi_plugins.outputs import write_new

        write_new(out, lambda tmp: estimator.save(tmp, overwrite=True))
    else:
        estimator.save(out, overwrite=True)
    training = estimator.metadata["training"]
    print(
        f"trained {simulator.name} estimator ({estimator.kind}) on "
        f"{training['num_simulations']} simulations, {training['epochs']} epochs, "
        f"validation loss {training['best_validation_loss']:.4f}"
    )
    print(f"wrote {out}\nsha256 {estimator.checksum}")
    if not args.out and recipe != simulator.recipe:
        print(
            f"its options differ from {simulator.name}'s recipe, so fits use it "
            f"only when asked: --estimator {out}"
        )
    return 0


ANNOUNCE_AFTER = 30.0
"""Seconds after which a fit without progress bars says it is under way."""


def cmd_fit(args: argparse.Namespace) -> int:
    from sbi_plugins.runner import fit

    out = Path(args.out)
    _refuse_existing(out)
    if args.posterior_predictive is not None and args.posterior_predictive < 0:
        raise CliError(
            "--posterior-predictive must be 0 (none) or more draws per chain"
        )
    started = time.perf_counter()
    # minutes of silence read as a hang; a bad table is refused well before it
    announce = threading.Timer(
        ANNOUNCE_AFTER,
        print,
        [
            f"sbi-plugins: fitting {args.simulator} to {args.data}, {args.chains} "
            f"chains x ({args.tune} + {args.draws}), progress bars off"
        ],
        {"file": sys.stderr, "flush": True},
    )
    announce.daemon = True
    if args.no_progress:
        announce.start()
    try:
        idata = fit(
            args.data,
            args.simulator,
            group=args.group,
            pooling=parse_pooling(args.pooling),
            formulas=args.formula,
            estimator=args.estimator,
            likelihood=args.likelihood,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            target_accept=args.target_accept,
            seed=args.seed,
            cores=args.cores,
            progress=not args.no_progress,
            compile=args.compile,
            p_outlier=parse_p_outlier(args.p_outlier),
            method=args.method,
            prior_predictive=args.prior_predictive or False,
            posterior_predictive=True
            if args.posterior_predictive is None
            else args.posterior_predictive or False,
            refine=parse_refine(args.refine),
            log_likelihood=LOG_LIKELIHOOD[args.log_likelihood],
            log_likelihood_draws=True
            if args.log_likelihood_draws is None
            else args.log_likelihood_draws,
            noncentered=args.noncentered,
            deadline=parse_deadline(args.deadline),
            mass_matrix=args.mass_matrix,
        )
    finally:
        announce.cancel()
    _write_netcdf(idata, out)
    import arviz as az

    print(az.summary(idata, kind="all").to_string())
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")
    return 0


def _write_netcdf(idata, out: Path) -> None:
    """Never a half-written file, and never over a file that appeared meanwhile."""
    from sbi_plugins.outputs import write_new

    write_new(out, lambda tmp: idata.to_netcdf(str(tmp)))


def cmd_compare(args: argparse.Namespace) -> int:
    from sbi_plugins.results.comparison import compare

    names = [Path(p).stem for p in args.fits]
    if len(set(names)) != len(names):
        names = list(args.fits)
    table = compare(dict(zip(names, args.fits, strict=True)))
    print(table.to_string())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sbi_plugins.check import EXIT_FAILED, SbcSettings, check_simulator

    for option in ("simulations", "heldout", "sbc_datasets", "sbc_trials"):
        if getattr(args, option) < 2:
            raise CliError(f"--{option.replace('_', '-')} must be at least 2")
    if min(args.sbc_draws, args.sbc_thin) < 1 or args.sbc_tune < 0:
        raise CliError("--sbc-draws and --sbc-thin must be at least 1, --sbc-tune 0")
    if args.max_log_error is not None and not args.max_log_error > 0:
        raise CliError("--max-log-error must be positive")
    if args.estimator and not Path(args.estimator).is_file():
        raise CliError(f"cannot read estimator file {args.estimator!r}: no such file")
    sbc = None
    if not args.no_sbc:
        sbc = SbcSettings(
            datasets=args.sbc_datasets,
            trials=args.sbc_trials,
            tune=args.sbc_tune,
            draws=args.sbc_draws,
            thin=args.sbc_thin,
        )
    options = {}
    if args.max_log_error is not None:
        options["max_log_error"] = args.max_log_error
    report = check_simulator(
        args.simulator,
        estimator=args.estimator,
        simulations=args.simulations,
        heldout=args.heldout,
        sbc=sbc,
        train=args.train,
        seed=args.seed,
        progress=not (args.no_progress or args.json),
        **options,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print(report.format())
    return 0 if report.ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from sbi_plugins.demo import run_demo

    run_demo(
        args.out,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sbi_plugins.report import fit_names, write_report

    path = write_report(
        dict(zip(fit_names(args.fits), args.fits, strict=True)),
        args.out,
        title=args.title,
        by=args.by,
    )
    print(f"wrote {path}")
    return 0


def _sampler_options(parser: argparse.ArgumentParser, seed: int | None) -> None:
    parser.add_argument("--draws", type=int, default=1000, help="draws per chain")
    parser.add_argument("--tune", type=int, default=1000, help="tuning steps per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--target-accept",
        type=float,
        default=0.8,
        help="NUTS's target acceptance rate; raise it (e.g. 0.95) when a fit "
        "reports divergent transitions",
    )
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbi-plugins",
        description="Simulation-based hierarchical Bayesian inference with "
        "simulator plugins.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "list",
        help="installed plugins, what they register, failures; or one simulator's "
        "parameters, bounds and columns (list angle)",
    )
    p.add_argument(
        "simulators",
        nargs="*",
        metavar="SIMULATOR",
        help="describe these simulators: parameters and the boxes their estimators "
        "know, data columns, estimator",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train a simulator's estimator")
    p.add_argument("simulator")
    p.add_argument("--num-simulations", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="estimator file to write (default: the cache)")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="simulate on this Dask cluster (tcp://host:8786); same seed, same data",
    )
    p.add_argument(
        "--workers", type=int, help="local simulation processes (default: cores)"
    )
    p.add_argument(
        "--device", default="cpu", help="train on cpu, cuda, cuda:N or auto (cpu)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit", help="fit a simulator's hierarchical model to a CSV")
    p.add_argument("simulator")
    p.add_argument(
        "data", help="table (CSV, JSON, Stata, ...) with the observable columns"
    )
    p.add_argument("--group", help="group column (subjects, sites, locations)")
    p.add_argument(
        "--pooling",
        default="partial",
        help="partial, none, complete, or per parameter: v=partial,a=complete",
    )
    p.add_argument(
        "--formula",
        action="append",
        metavar="FORMULA",
        help="a parameter's regression formula, e.g. \"v ~ 1 + difficulty + "
        '(1|participant_id)"; repeat for more parameters',
    )
    # checked by fit, which names HSSM's words for them ('analytical' -> exact)
    p.add_argument("--likelihood", metavar="{neural,exact}", default="neural")
    p.add_argument("--estimator", help="estimator file (default: shipped or cached)")
    p.add_argument("--cores", type=int, default=None)
    p.add_argument(
        "--mass-matrix",
        choices=MASS_MATRICES,
        default="auto",
        help="NUTS's mass matrix: auto (default: dense where every population is "
        "centered and the warm-up's last window has 5 draws per dimension, up to "
        "100 dimensions at --tune 1000), diagonal, or dense, for posteriors where "
        "a pooled parameter moves with many subjects' values",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the model's potential with torch.compile (default: when "
        "chains x (draws + tune) >= 4000 and the data have >= 500 rows)",
    )
    p.add_argument(
        "--p-outlier",
        metavar="SHARE",
        help="a lapse component for fast guesses and lapses, as HSSM's p_outlier: "
        "a share such as 0.05 (0: none), or 'estimate' to sample it (Beta(2, 38) "
        "prior)",
    )
    p.add_argument(
        "--method",
        choices=tuple(METHODS),
        default="nuts",
        help="inference method (default: nuts)",
    )
    p.add_argument(
        "--posterior-predictive",
        type=int,
        metavar="DRAWS",
        help="draws per chain with a data set simulated at each (default: all up to "
        "2 million simulated rows, evenly spaced draws beyond; 0: none); a larger "
        "predictive is written to --out batch by batch, never whole in memory",
    )
    p.add_argument(
        "--prior-predictive",
        type=int,
        nargs="?",
        const=True,
        metavar="DRAWS",
        default=0,
        help="also draw this many times from the prior (the flag alone: as "
        "prior_predictive=True, 500) and simulate a data set at each (ArviZ's "
        "prior and prior_predictive groups; default: none)",
    )
    p.add_argument(
        "--refine",
        metavar="auto|on|off|N",
        default="auto",
        help="fine-tune the estimator at this fit's posterior and refit until the "
        "posterior stops moving (default auto: from 2000 rows; N: at most N rounds)",
    )
    p.add_argument(
        "--log-likelihood",
        choices=tuple(LOG_LIKELIHOOD),
        default="float32",
        help="the pointwise log-likelihood for az.loo / compare: float32 (default, "
        "half the size), float64, or none (left out)",
    )
    p.add_argument(
        "--log-likelihood-draws",
        type=int,
        metavar="DRAWS",
        help="draws per chain the pointwise log-likelihood keeps (default: all up "
        "to 50 million values, evenly spaced draws beyond, the predictive's "
        "draws where it keeps 2000 or more, for az.plot_loo_pit; --draws for all)",
    )
    p.add_argument(
        "--deadline",
        metavar="SECONDS|COLUMN",
        help="trials ended without a response after this time: seconds, or a "
        "column of per-trial deadlines (HSSM's 'deadline'); rows with rt empty or "
        "-999 are then omissions, scored by the probability of no decision in time",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--auto-centering",
        dest="noncentered",
        action="store_const",
        const="auto",
        default="auto",
        help="the default: every normal population sampled centered where each "
        "group's data pin its value down (faster there), else non-centered",
    )
    form.add_argument(
        "--noncentered",
        dest="noncentered",
        action="store_const",
        const=True,
        help="sample every normal population through standard-normal offsets per "
        "group (as Bambi and HSSM), whatever the data",
    )
    form.add_argument(
        "--centered",
        dest="noncentered",
        action="store_const",
        const=False,
        help="sample each group's value of a normal population directly",
    )
    p.add_argument(
        "--out",
        required=True,
        help="netCDF file to write (FIT.nc; missing folders are created, an "
        "existing file is never overwritten)",
    )
    _sampler_options(p, None)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("compare", help="rank fits of the same data by PSIS-LOO")
    p.add_argument("fits", nargs="+", help="FIT.nc files")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "check",
        help="validate a simulator plugin: contract, estimator, calibration (SBC)",
        description="Validate a registered simulator for its author. Exit status 0 "
        "when every check passes (warnings allowed), 1 when a check fails, 2 for a "
        "usage error.",
    )
    p.add_argument("simulator")
    p.add_argument("--estimator", help="estimator file (default: shipped or cached)")
    p.add_argument(
        "--train",
        action="store_true",
        help="train and cache the recipe's estimator if none is shipped or cached",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--no-sbc", action="store_true", help="skip the calibration")
    p.add_argument("--sbc-datasets", type=int, default=30, help="data sets (30)")
    p.add_argument("--sbc-trials", type=int, default=20, help="trials each (20)")
    p.add_argument("--sbc-tune", type=int, default=200, help="NUTS tuning steps")
    p.add_argument("--sbc-draws", type=int, default=200, help="NUTS draws")
    p.add_argument("--sbc-thin", type=int, default=2, help="keep every n-th draw")
    p.add_argument(
        "--simulations", type=int, default=1000, help="contract batch size (1000)"
    )
    p.add_argument(
        "--heldout", type=int, default=2000, help="fresh simulations to score (2000)"
    )
    p.add_argument(
        "--max-log-error",
        type=float,
        default=None,
        help="largest mean |learned - exact| log-likelihood, nats per trial (0.1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "report",
        help="one self-contained report.html of fits: figures, tables, diagnostics",
    )
    p.add_argument("fits", nargs="+", help="FIT.nc files")
    p.add_argument("--out", required=True, help="directory to write report.html to")
    p.add_argument("--title", default="sbi-plugins report", help="the page title")
    p.add_argument(
        "--by",
        help="data column of the conditions for decision models' quantile-probability "
        "plot and predictive checks (default: the first column with 2-8 values)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the cookie factory: three fits, compared")
    p.add_argument("--out", default="sbi-plugins-demo", help="directory to write")
    _sampler_options(p, 2025)
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as the errors are: one line, no source path."""
    return f"sbi-plugins: warning: {message}\n"


def _row_note(exc: SbiPluginsError) -> str:
    """Rows are named by the table's index, which for a file is pandas': counted
    from 0 below the header, so 'row 2' is the file's fourth line."""
    if isinstance(exc, DataError) and re.search(r"\brows? \d", str(exc)):
        return " (rows count from 0 below the header, as pandas does)"
    return ""


def unknown_options_message(extra: Sequence[str]) -> str | None:
    """argparse's "unrecognized arguments", with the flag to give instead of an
    option HSSM or HDDM users type from habit (`--include`, `--hierarchical`);
    None where none of them is such an option."""
    hints = []
    for token in extra:
        name = token.lstrip("-").split("=")[0].replace("-", "_")
        if token.startswith("--") and name in FOREIGN_FLAGS:
            hints.append(f"no {token.split('=')[0]} option: {FOREIGN_FLAGS[name]}")
    if not hints:
        return None
    return f"unrecognized arguments: {' '.join(extra)}; " + "; ".join(hints)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(
            unknown_options_message(extra)
            or f"unrecognized arguments: {' '.join(extra)}"
        )
    # ArviZ's message starts with a newline, which "." does not match.
    warnings.filterwarnings(
        "ignore", message=r"\s*ArviZ is undergoing a major refactor"
    )
    warnings.formatwarning = _one_line
    try:
        with terminate_as_interrupt():
            return args.func(args)
    except SbiPluginsError as exc:
        print(f"sbi-plugins: error: {exc}{_row_note(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print("sbi-plugins: terminated", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("sbi-plugins: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
