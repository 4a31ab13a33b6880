"""Draws and data -> InferenceData: pointwise log-likelihood, predictive, comparison."""
