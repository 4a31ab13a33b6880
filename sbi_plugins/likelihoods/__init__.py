"""Likelihoods as Pyro distributions: learned (guarded by the training domain) and
exact, per-group scoring, exact reductions (shift, scale) and lapse mixtures."""
