"""Experiments on top of training: ablation sweeps (sweep/) and comparison tables and plots
of evaluated runs (report/)."""
