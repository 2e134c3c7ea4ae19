"""Prepares a data set once: its raw layout -> sharded array_record files (docs/data.md#preparation).

  python -m denseav_jax.prepare --dataset places_audio --raw_dir /data --out_dir /prepared
      [--splits train,val] [--examples_per_shard 1024] [--workers N] [--audio_channels first]
      [--clip_samples 164200] [--min_audio_fraction 0.04] [--compression none|zstd]
      [--manifest_dir DIR]

A killed run continues with the shards it had not finished; unusable examples are skipped,
counted and listed in OUT/NAME/VERSION/prepare_summary.json (denseav_jax/data/prepare.py).
"""

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


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  for name in ('dataset', 'raw_dir', 'out_dir'):
    if not f[name].value:
      raise errors.UserError(f'--{name} is required (python -m denseav_jax.prepare --dataset '
                             'NAME --raw_dir RAW --out_dir OUT)')
  prepare_lib.prepare(f.dataset, f.raw_dir, f.out_dir, splits=f.splits or None,
                      examples_per_shard=f.examples_per_shard, workers=f.workers,
                      channels=f.audio_channels, clip_samples=f.clip_samples,
                      min_audio_fraction=f.min_audio_fraction, compression=f.compression,
                      manifest_dir=f.manifest_dir)


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
