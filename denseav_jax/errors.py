"""Errors a user can act on. Library code raises them; only the command-line entry points
(denseav_jax.cli.run_main) turn them into one-line messages without a traceback."""

import importlib


class DenseAVError(Exception):
  """Base class: the message says what is wrong (naming the key, file or value) and what
  to do."""


class ConfigError(DenseAVError, ValueError):
  """A config value that cannot work (names the key and the allowed values)."""


class UserError(DenseAVError):
  """A command-line or input problem the user can fix (a flag, a file, a value)."""


class CheckpointError(DenseAVError):
  """A checkpoint that cannot be used (incompatible with the config, or none readable)."""


class ConversionError(DenseAVError, ValueError):
  """PyTorch weights that cannot be converted: an unreadable file, or a state dict that does
  not match the model (the message lists the unknown, missing and mis-shaped keys)."""


class NonFiniteLoss(DenseAVError, FloatingPointError):
  """Training produced a NaN or Inf (names the step and the loss terms)."""


class MissingExtra(DenseAVError, ImportError):
  """An optional package is not installed (or does not import); the message names the
  setup.cfg extra that installs it."""


# The data layer's two kinds of failure (docs/data.md#bad-input). `BadExample`: one example
# cannot be used (a missing, empty, truncated or undecodable file, a label map of the wrong
# size, a clip too short to train on, a metadata row that cannot be interpreted); readers
# raise it and the pipeline skips the example with a counted warning naming the file,
# filling its slot with another example so batches stay full. `DataError`: the data set as a
# whole cannot be read (wrong root or layout, too many bad files, nothing left to read).

REASONS = (
    'missing',      # a listed file is absent
    'empty',        # 0 bytes, or no samples could be decoded
    'truncated',    # fewer samples than the file's header declares
    'undecodable',  # the codec library cannot read it
    'label_size',   # a label map whose size differs from its image's
    'short_audio',  # valid samples below data.min_audio_fraction of the clip
    'bad_row',      # a metadata row that cannot be interpreted
)


class DataError(DenseAVError):
  """The data set cannot be read as configured; the message says what to do."""


class BadExample(Exception):
  """One unusable example: `reason` (one of REASONS), the file (or row) and what is wrong."""

  def __init__(self, reason: str, path: str, detail: str = ''):
    if reason not in REASONS:
      raise ValueError(f'unknown BadExample reason {reason!r}; use one of {REASONS}')
    self.reason, self.path, self.detail = reason, path, detail
    super().__init__(f'{reason}: {path}' + (f' ({detail})' if detail else ''))

  def __reduce__(self):  # Picklable across Grain worker processes.
    return (BadExample, (self.reason, self.path, self.detail))


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
