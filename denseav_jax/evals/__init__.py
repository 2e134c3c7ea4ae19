"""Sharded evaluation: evaluators listed by name in config.evals (segmentation, retrieval,
disentangle; registry.py maps names to them), the sharded embedding pass (embed, sets,
pairs), the metrics as the release computes them (metrics), figures and PCA pictures, and
the suite that runs whichever evaluators are due (suite)."""
