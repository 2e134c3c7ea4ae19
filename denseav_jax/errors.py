"""Errors a user can act on. Library code raises them; only the command-line entry points
(denseav_jax.cli.run_main) turn them into one-line messages without a traceback."""

import importlib


class DenseAVError(Exception):
  """Base class: the message says what is wrong (naming the key, file or value) and what
  to do."""


class ConfigError(DenseAVError, ValueError):
  """A config value that cannot work (names the key and the allowed values)."""


class CheckpointError(DenseAVError):
  """A checkpoint that cannot be used (incompatible with the config, or none readable)."""


class NonFiniteLoss(DenseAVError, FloatingPointError):
  """Training produced a NaN or Inf (names the step and the loss terms)."""


class MissingExtra(DenseAVError, ImportError):
  """An optional package is not installed (or does not import); the message names the
  setup.cfg extra that installs it."""


def require(module_name: str, extra: str, what: str):
  """Imports and returns `module_name`, or raises MissingExtra naming `pip install -e
  .[extra]`.

  `what` says what needs the module ('reading a PyTorch checkpoint'); the message reads
  "{what} needs {package}, which is not installed: pip install -e .[{extra}]" (one line).
  A package that is installed but fails to import says so, with the import error's first
  line, and the same command.
  """
  package = module_name.split('.')[0]
  try:
    return importlib.import_module(module_name)
  except ImportError as e:
    missing = getattr(e, 'name', None)
    if isinstance(e, ModuleNotFoundError) and (
        missing is None or missing == module_name or module_name.startswith(f'{missing}.')):
      raise MissingExtra(f'{what} needs {package}, which is not installed: '
                         f'pip install -e .[{extra}]') from None
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__
    raise MissingExtra(f'{what} needs {package}, which could not be imported ({detail}): '
                       f'pip install -e .[{extra}]') from None
