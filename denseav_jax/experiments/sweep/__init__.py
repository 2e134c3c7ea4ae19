r"""Ablation sweeps: one training run per point and seed, resumable, with a results table.

  python -m denseav_jax.sweep --config configs/ablations/NAME.py[:ARG] --workdir DIR \
      [--launcher local|tpu|slurm] [--parallel N] [--only LABEL,...] [--dry_run] \
      [--fail_fast] [--progress_every 30] [--config.seeds=(0,1) ...]

A sweep config (spec.sweep_config) names a base training config and points (config
overrides built with spec.axis / product / union); each point runs once per seed in
DIR/LABEL_seedN. Running the same command again skips finished runs and resumes the
others from their checkpoints. Modules: spec (what a sweep is), configs (each run's
training config and flags), runner (the sweep on disk, results), schedule (child
processes, progress, signals), launchers (local, TPU VMs, SLURM), status (a run's state).
"""
