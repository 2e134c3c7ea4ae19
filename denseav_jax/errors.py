"""Errors a user can act on. Library code raises them; only the command-line entry points
(denseav_jax.cli.run_main) turn them into one-line messages without a traceback."""


class DenseAVError(Exception):
  """Base class: the message says what is wrong (naming the key, file or value) and what
  to do."""


class ConfigError(DenseAVError, ValueError):
  """A config value that cannot work (names the key and the allowed values)."""


class CheckpointError(DenseAVError):
  """A checkpoint that cannot be used (incompatible with the config, or none readable)."""


class NonFiniteLoss(DenseAVError, FloatingPointError):
  """Training produced a NaN or Inf (names the step and the loss terms)."""
