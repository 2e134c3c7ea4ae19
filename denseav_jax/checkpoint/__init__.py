"""Saved models: parameters and config of a model (model_io.py), the trainer's checkpoints
with their data position and meta (train_checkpoints.py), what a failed restore means:
damage or trouble (restore_failures.py), one trainer per workdir (workdir_lock.py), and
what a path names (a converted model, a training workdir or one of its steps) for predict
and evaluate (resolve.py)."""
