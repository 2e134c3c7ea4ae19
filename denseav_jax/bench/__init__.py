"""Benchmarks (run as modules, e.g. `python -m denseav_jax.bench.similarity`)."""
