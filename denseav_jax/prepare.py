"""Prepares a data set once: its raw layout -> sharded array_record files (docs/data.md#preparation).

  python -m denseav_jax.prepare --dataset places_audio --raw_dir /data --out_dir /prepared
      [--splits train,val] [--examples_per_shard 1024] [--workers N] [--audio_channels first]
      [--clip_samples 164200] [--min_audio_fraction 0.04] [--compression none|zstd]
      [--manifest_dir DIR] [--max_missing_fraction F] [--rescan]

A killed run continues with the shards it had not finished; unusable examples are skipped,
counted and listed in OUT/NAME/VERSION/prepare_summary.json (denseav_jax/data/prepare.py).
"""

import os

from absl import flags

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.data import prepare as prepare_lib
from denseav_jax.data import sources


def define_flags() -> None:
  flags.DEFINE_enum('dataset', None, sorted(sources.DATASETS), 'The data set to prepare.')
  flags.DEFINE_string('raw_dir', None, 'The folder holding the data-set folders as '
                      'distributed.')
  flags.DEFINE_string('out_dir', None, 'Where the records go (data.prepared_dir).')
  flags.DEFINE_list('splits', [], 'Splits to prepare (default: all).')
  flags.DEFINE_integer('examples_per_shard', 1024, 'Examples per array_record shard.')
  flags.DEFINE_integer('workers', 0, 'Processes (default: all cores).')
  flags.DEFINE_enum('audio_channels', 'first', ['first', 'mean'], 'Multi-channel audio: the '
                    'first channel (the release) or their mean.')
  flags.DEFINE_integer('clip_samples', prepare_lib.DEFAULT_CLIP_SAMPLES, 'The model clip the '
                       'short-audio rule refers to.')
  flags.DEFINE_float('min_audio_fraction', 0.04, 'Clips with less valid audio than this '
                     'fraction of --clip_samples are skipped.')
  flags.DEFINE_enum('compression', 'none', sorted(prepare_lib.COMPRESSION), 'Record '
                    'compression (zstd: ~20 % smaller, ~5x slower to read).')
  flags.DEFINE_string('manifest_dir', '', 'Raw-layout index cache when the raw folder is '
                      'read-only.')
  flags.DEFINE_float('max_missing_fraction', -1.0, 'Listed examples allowed to be left out '
                     'for missing files or unreadable rows, as a fraction (e.g. 0.2); < 0: '
                     "the data set's own (Places Audio 0.97, AudioSet 0.17 train / 0.02 val, "
                     'ADE20K 0).')
  flags.DEFINE_bool('rescan', False, 'Index the raw folders again even if their cached '
                    'manifest looks current (needed only where folder times do not change '
                    'when files are added, e.g. some object-store mounts).')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  for name in ('dataset', 'raw_dir', 'out_dir'):
    if not f[name].value:
      raise errors.UserError(f'--{name} is required (python -m denseav_jax.prepare --dataset '
                             'NAME --raw_dir RAW --out_dir OUT)')
  if not os.path.isdir(f.raw_dir):
    raise errors.UserError(f'--raw_dir={f.raw_dir} does not exist: give the folder holding '
                           'the data-set folders as distributed')
  for name, ok, what in (('examples_per_shard', f.examples_per_shard >= 1, '>= 1'),
                         ('workers', f.workers >= 0, '>= 0 (0: all cores)'),
                         ('clip_samples', f.clip_samples >= 1, '>= 1'),
                         ('min_audio_fraction', 0 <= f.min_audio_fraction <= 1, 'in [0, 1]')):
    if not ok:
      raise errors.UserError(f'--{name}={f[name].value} must be {what}')
  prepare_lib.prepare(f.dataset, f.raw_dir, f.out_dir, splits=f.splits or None,
                      examples_per_shard=f.examples_per_shard, workers=f.workers,
                      channels=f.audio_channels, clip_samples=f.clip_samples,
                      min_audio_fraction=f.min_audio_fraction, compression=f.compression,
                      manifest_dir=f.manifest_dir, max_missing_fraction=f.max_missing_fraction,
                      rescan=f.rescan)


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
