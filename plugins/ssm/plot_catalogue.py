"""Draw the catalogue's RT distributions for docs/ssm.md.

    python plugins/ssm/plot_catalogue.py [docs/images/ssm-catalogue.png]

One panel per model: 5,000 trials of one simulated subject (`simulate_dataset`,
seed 0, the subject's parameters printed in the panel), RT histograms per response;
for two-boundary models the lower response's RTs are drawn downwards, as HSSM does.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sbi_plugins_ssm import CATALOGUE, simulate_dataset


def main(out: str = "docs/images/ssm-catalogue.png") -> None:
    columns = 4
    rows = -(-len(CATALOGUE) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12, 2.4 * rows), sharex=True)
    bins = np.linspace(0, 3, 76)
    for ax, model in zip(axes.flat, CATALOGUE, strict=False):
        trials, truth = simulate_dataset(model, n_subjects=1, n_trials=5000, seed=0)
        codes = np.unique(trials["response"].dropna())
        for code in codes:
            rt = trials.loc[trials["response"] == code, "rt"].dropna()
            weights = np.full(len(rt), 1 / len(trials) / (bins[1] - bins[0]))
            if set(codes) <= {-1, 1}:
                weights *= 1 if code > 0 else -1
            ax.hist(rt, bins, weights=weights, histtype="step", label=f"{code:g}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(model, fontsize=10)
        values = ", ".join(f"{k} {v:.2g}" for k, v in truth.iloc[0].items())
        ax.text(
            0.98,
            0.95,
            values,
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=6,
            wrap=True,
        )
        ax.legend(title="response", fontsize=6, title_fontsize=6, loc="center right")
    for ax in axes.flat[len(CATALOGUE) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("rt (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:])
