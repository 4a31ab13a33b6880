"""Thin plots on matplotlib and ArviZ output: what a scientist reads a fit by."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np

from sbi_plugins.errors import SbiPluginsError


def _group_dim(idata: az.InferenceData, parameter: str) -> str:
    dims = [d for d in idata.posterior[parameter].dims if d not in ("chain", "draw")]
    if len(dims) != 1:
        raise SbiPluginsError(
            f"{parameter!r} has no group dimension in this fit (pooling 'complete'?)"
        )
    return dims[0]


def plot_shrinkage(
    unpooled: az.InferenceData,
    hierarchical: az.InferenceData,
    parameter: str,
    *,
    pooled: az.InferenceData | None = None,
    hdi_prob: float = 0.94,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Per group: the unpooled and the hierarchical estimate (mean and HDI), with the
    population mean. Partial pooling pulls noisy groups towards the population."""
    dim = _group_dim(hierarchical, parameter)
    labels = hierarchical.posterior[dim].values
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 4))
    positions = np.arange(len(labels))
    for offset, (name, idata, color) in zip(
        (-0.12, 0.12),
        (
            ("unpooled", unpooled, "tab:gray"),
            ("hierarchical", hierarchical, "tab:blue"),
        ),
        strict=True,
    ):
        draws = idata.posterior[parameter]
        mean = draws.mean(("chain", "draw")).values
        hdi = az.hdi(idata, var_names=[parameter], hdi_prob=hdi_prob)[parameter].values
        ax.errorbar(
            positions + offset,
            mean,
            yerr=np.abs(hdi.T - mean),
            fmt="o",
            color=color,
            capsize=3,
            label=f"{name} (mean, {hdi_prob:.0%} HDI)",
        )
    mu_name = f"{parameter}_mu"
    if mu_name in hierarchical.posterior:
        mu = float(hierarchical.posterior[mu_name].mean())
        ax.axhline(
            mu, color="tab:blue", ls="--", lw=1, label=f"population mean {mu_name}"
        )
    if pooled is not None:
        value = float(pooled.posterior[parameter].mean())
        ax.axhline(value, color="tab:red", ls=":", lw=1, label="pooled estimate")
    ax.set_xticks(positions, [str(label) for label in labels])
    ax.set_xlabel(dim)
    ax.set_ylabel(parameter)
    ax.set_title(f"Shrinkage of {parameter}: unpooled vs hierarchical")
    ax.legend(fontsize="small", loc="best")
    return ax


def save_shrinkage_plot(
    fits: Mapping[str, az.InferenceData], parameter: str, path: str | Path
) -> Path:
    """Write the shrinkage plot of a demo-style trio of fits as PNG."""
    ax = plot_shrinkage(
        fits["unpooled"], fits["hierarchical"], parameter, pooled=fits.get("pooled")
    )
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return Path(path)
