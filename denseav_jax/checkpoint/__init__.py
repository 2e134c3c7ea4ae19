"""Saved models: parameters and config of a model (model_io.py), the trainer's checkpoints
with their data position and meta (train_checkpoints.py)."""
