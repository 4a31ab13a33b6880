"""The cookie factory demo: pooled, unpooled and hierarchical fits, compared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import arviz as az
import pandas as pd

from sbi_plugins.errors import PluginError, SbiPluginsError
from sbi_plugins.outputs import OutputError, check_writable_dir, write_new
from sbi_plugins.plot import save_shrinkage_plot
from sbi_plugins.plugin.registry import get_simulator
from sbi_plugins.report import REPORT_FILE, render_report
from sbi_plugins.results.comparison import compare
from sbi_plugins.runner import fit

POOLINGS = {"pooled": "complete", "unpooled": "none", "hierarchical": "partial"}
DEMO_FILES = [f"{name}.nc" for name in POOLINGS] + [
    "shrinkage.png",
    "comparison.csv",
    REPORT_FILE,
]


def check_output_dir(out_dir: Path) -> None:
    """Refuse before any work if a file the demo writes is already there, or the
    directory cannot take files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SbiPluginsError(f"{out_dir} exists and is not a directory")
    taken = [name for name in DEMO_FILES if (out_dir / name).exists()]
    if taken:
        raise SbiPluginsError(
            f"{out_dir} already holds {', '.join(taken)}; choose another --out "
            "directory (nothing was overwritten)"
        )
    check_writable_dir(out_dir)


def write_outputs(out_dir: Path, writers: dict[str, Callable[[Path], object]]) -> None:
    """Write every file, none over one that appeared meanwhile; those kept under
    another name are reported together at the end, so nothing is lost."""
    kept = []
    for name, write in writers.items():
        try:
            write_new(out_dir / name, write)
        except OutputError as exc:
            kept.append(str(exc))
    if kept:
        raise OutputError("; ".join(kept))


def run_demo(
    out_dir: str | Path = "sbi-plugins-demo",
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 2025,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, az.InferenceData]:
    """Fit the 150 cookies three ways with the shipped estimator and write the fits,
    the comparison table, a shrinkage plot and `report.html` into `out_dir`."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    try:
        simulator = get_simulator("cookie")
    except PluginError as exc:
        raise SbiPluginsError(
            f"the demo needs the cookie plugin ({exc}); install it with "
            "`pip install -e plugins/cookie`"
        ) from exc
    data = simulator.example_data()
    locations = data["location"].nunique()
    echo(f"cookie factory: {len(data)} cookies from {locations} locations")
    fits = {}
    for name, pooling in POOLINGS.items():
        echo(f"fitting the {name} model (pooling={pooling!r})")
        fits[name] = fit(
            data,
            simulator,
            group="location",
            pooling=pooling,
            draws=draws,
            tune=tune,
            chains=chains,
            seed=seed,
            progress=progress,
        )
    table = compare(fits)
    writers: dict[str, Callable[[Path], object]] = {
        f"{name}.nc": lambda tmp, idata=idata: idata.to_netcdf(str(tmp))
        for name, idata in fits.items()
    }
    writers["comparison.csv"] = table.to_csv
    writers["shrinkage.png"] = lambda tmp: save_shrinkage_plot(fits, "lam", tmp)
    title = "sbi-plugins demo: the cookie factory"
    html = render_report(fits, title=title)
    writers[REPORT_FILE] = lambda tmp: tmp.write_text(html, encoding="utf-8")
    write_outputs(out_dir, writers)
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        echo("\nmodel comparison (PSIS-LOO, best first):")
        echo(table.to_string())
        echo("\nhierarchical fit:")
        echo(
            az.summary(
                fits["hierarchical"], var_names=["lam", "lam_mu", "lam_sigma"]
            ).to_string()
        )
    echo(f"\nwrote {', '.join(DEMO_FILES)} to {out_dir}/")
    return fits
