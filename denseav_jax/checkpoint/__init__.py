"""Saved models: parameters and config of a model (model_io.py), the trainer's checkpoints
with their data position and meta (train_checkpoints.py), and what a path names (a
converted model, a training workdir or one of its steps) for predict and evaluate
(resolve.py)."""
