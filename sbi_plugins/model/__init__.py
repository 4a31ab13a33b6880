"""The one hierarchical model: per-parameter pooling or formulas, truncated
population priors, and the potential that is sampled."""
