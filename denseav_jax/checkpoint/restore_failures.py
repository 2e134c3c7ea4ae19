"""Why a checkpoint failed to restore: damage to its files, or trouble around them.

Only damage sets a checkpoint aside (train_checkpoints.py moves it to
WORKDIR/checkpoints_damaged/ and tries the one before); trouble (out of memory, a failing
or unreachable filesystem, a state that does not fit the current mesh or model) stops the
run with one line and moves nothing, since every older checkpoint would fail the same way.
Whatever is not recognised as damage is trouble: a checkpoint is only ever moved on
evidence that its own files are broken.

Damage, as Orbax 0.12.8 and TensorStore 0.1.86 report it (measured on the checkpoints the
trainer writes: an OCDBT database of zstd-compressed zarr chunks per item;
tests/checkpoint/test_restore_failures.py damages each file on purpose):

- garbage or empty JSON in `meta/metadata` or `state/_METADATA`: json.JSONDecodeError;
  bytes that are not UTF-8: UnicodeDecodeError;
- `meta/metadata` valid JSON without the keys every meta has: BadMeta (raised here);
- `meta/metadata` missing: FileNotFoundError (Orbax's JSON handler); a whole item folder
  (`meta/` or `state/`) missing: KeyError 'Item "meta" was not found in the checkpoint';
- `state/_METADATA` missing: Orbax reads the tree from the array keys instead and fails
  with a tree-structure ValueError that a changed model also gives, so the file's absence
  is checked before the restore (FileNotFoundError);
- array data (`state/ocdbt.process_*/d/*`) truncated: TensorStore ValueError
  'OUT_OF_RANGE: ... Requested byte range [a, b) is not valid for value of size n';
  missing, or its zstd stream corrupted: 'FAILED_PRECONDITION: ... Truncated
  Zstd-compressed stream' / '... ZSTD_decompressStream() failed: Data corruption detected';
- the OCDBT manifest or B-tree nodes (`state/manifest.ocdbt`, `state/d/*`) truncated,
  missing or corrupted: TensorStore ValueError 'OUT_OF_RANGE: ...', 'NOT_FOUND: ...' or
  'DATA_LOSS: ... Error decoding ...' (the nodes carry checksums); a node whose zstd frame
  header is corrupted: an INVALID_ARGUMENT, which TensorStore raises without its code:
  'Error opening "zarr" driver: ... in OCDBT database at ...: Error decoding b-tree node:
  ZSTD_decompressStream() failed: Unknown frame descriptor', recognised by naming
  TensorStore's driver or database and a decoding failure (a plain ValueError, such as a
  sharding or shape mismatch, is trouble).

Orbax wraps an array's TensorStore error in a bare Exception('Encountered error while
reading array index ...'), so the whole chain of causes is examined. A TensorStore error
that carries an operating-system error code (`[os_error_code='5']`: EIO, EACCES,
ETIMEDOUT, ENOSPC, ...) is trouble whatever its status code. Not detectable: flipped bits
inside chunks that zstd stored uncompressed (random-looking floats) restore without an
error, since neither Orbax nor zarr checksum chunk data.
"""

import json

DAMAGE = 'damage'
TROUBLE = 'trouble'
# TensorStore raises ValueError for (almost) every status; the message starts with the
# status code. These mean the stored bytes are missing or not what was written.
_DAMAGE_CODES = ('DATA_LOSS:', 'NOT_FOUND:', 'OUT_OF_RANGE:', 'FAILED_PRECONDITION:')
# An INVALID_ARGUMENT from TensorStore (no code in the message) that says stored bytes do
# not decode: the error names TensorStore's driver or database, and the decoding failure.
_TENSORSTORE = ('OCDBT database', '" driver:', 'tensorstore_spec')
_UNDECODABLE = ('Error decoding', 'decompress', 'Zstd-compressed', 'checksum')
_IO_CODES = ('UNKNOWN:', 'UNAVAILABLE:', 'DEADLINE_EXCEEDED:', 'PERMISSION_DENIED:',
             'ABORTED:', 'CANCELLED:', 'INTERNAL:')


class MissingFile(FileNotFoundError):
  """A file every checkpoint of this layout has is absent (checked before restoring)."""


class BadMeta(ValueError):
  """The meta item is JSON but lacks what every saved meta holds."""


def chain(e: BaseException) -> list[BaseException]:
  """e and its explicit causes (`raise ... from`), outermost first. Not the implicit
  contexts: an error handled on the way (json's StopIteration) says nothing."""
  out = []
  while e is not None and not any(x is e for x in out):
    out.append(e)
    e = e.__cause__
  return out


def _is_damage(e: BaseException) -> bool:
  if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError, BadMeta)):
    return True
  text = str(e)
  if isinstance(e, KeyError):
    return 'was not found in the checkpoint' in text
  if type(e) is ValueError and 'os_error_code=' not in text:  # pylint: disable=unidiomatic-typecheck
    return text.startswith(_DAMAGE_CODES) or (  # INVALID_ARGUMENT comes without its code.
        any(m in text for m in _TENSORSTORE) and any(d in text for d in _UNDECODABLE))
  return False


def classify(e: BaseException) -> str:
  """DAMAGE when the chain holds an error that a damaged checkpoint file produces and
  none that the operating system reported; TROUBLE otherwise."""
  errors = chain(e)
  if any('os_error_code=' in str(x) for x in errors):
    return TROUBLE
  if any(isinstance(x, (MemoryError, OSError)) and not isinstance(x, FileNotFoundError)
         for x in errors):
    return TROUBLE
  return DAMAGE if any(_is_damage(x) for x in errors) else TROUBLE


def reason(e: BaseException) -> str:
  """'Type: message' of the innermost error (Orbax's wrapper says nothing), one line."""
  inner = chain(e)[-1]
  text = ' '.join(str(inner).split()).split('[tensorstore_spec')[0].strip()
  if len(text) > 320:  # TensorStore chains 'context: context: cause': keep both ends.
    text = f'{text[:100]} ... {text[-200:]}'
  return f'{type(inner).__name__}: {text}'


def hint(e: BaseException) -> str:
  """What to do about trouble, from the kind of error ('' when nothing specific)."""
  errors = chain(e)
  texts = ' '.join(str(x) for x in errors)
  if any(isinstance(x, MemoryError) for x in errors) or 'out of memory' in texts.lower() or (
      'RESOURCE_EXHAUSTED' in texts and "os_error_code='28'" not in texts):  # Not ENOSPC.
    return ('The restore ran out of memory: resume on machines with more memory, or with '
            'a config.mesh that shards the state over more devices.')
  if any(isinstance(x, OSError) for x in errors) or 'os_error_code=' in texts or any(
      str(x).startswith(_IO_CODES) for x in errors):
    return ('The filesystem failed: check that it is mounted, reachable, readable and '
            'not full.')
  if any(isinstance(x, ValueError) for x in errors):
    return ('The saved state does not fit what this run builds (shapes, shardings or '
            'tree): check config.mesh and mesh_dcn, and the model config against the '
            "run's config.json.")
  return ''
