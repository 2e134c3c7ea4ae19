"""The data layer's two kinds of failure (docs/data.md#bad-input).

`BadExample`: one example cannot be used (a missing, empty, truncated or undecodable file,
a label map of the wrong size, a clip too short to train on, a metadata row that cannot be
interpreted). Readers raise it; the pipeline skips the example with a counted warning
naming the file and fills its slot with another example, so batches stay full.

`DataError`: the data set as a whole cannot be read (wrong root or layout, too many bad
files, nothing left to read). One message says what was expected where and what to do.
"""

from denseav_jax.errors import DenseAVError

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
