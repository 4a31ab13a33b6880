"""Likelihoods as Pyro distributions: learned (guarded by the training domain) or
exact, and lapse mixtures. How a learned one scores rows per group, and the
reductions its network was trained under, are the estimators' (`sbi_plugins.
estimators.grouped`, `sbi_plugins.estimators.reduction`)."""
