"""Old name of `sbi_plugins.plot`, kept so that existing imports keep working."""

from sbi_plugins.plot import plot_shrinkage, save_shrinkage_plot

__all__ = ["plot_shrinkage", "save_shrinkage_plot"]
