"""Ablation sweeps: one file per axis (docs/ablations.md); common.py is what they share."""
