"""A look at the synthetic world: a PNG grid of examples, their captions, and its speed.

  python -m denseav_jax.tools.synthetic_preview [--out_dir /tmp] [--num_examples 12]
      [--seed 0] [--config configs/synthetic.py[:VARIANT]] [--notiming]

Writes OUT_DIR/synthetic_preview.png (per example: the image, its class map and the
caption's spectrogram; four examples a row: half from the training stream, then
speech-prompted and sound-prompted ones) and OUT_DIR/synthetic_preview.txt (one line per
example). With --config the world is the one that run config trains on (its data.world and
input geometry); without, the default `WorldConfig()`. Unless --notiming, it first prints
how many milliseconds an example takes at the world's size and at 224 px. The drawing is
denseav_jax/data/synthetic/preview.py.
"""

import dataclasses

from absl import flags

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.data.synthetic import preview
from denseav_jax.data.synthetic import source
from denseav_jax.data.synthetic import world


def define_flags() -> None:
  cli.define_flags(workdir=False)
  flags.DEFINE_string('out_dir', '/tmp', 'Folder for synthetic_preview.png and .txt.')
  flags.DEFINE_integer('num_examples', 12, 'Examples in the grid (four a row).')
  flags.DEFINE_integer('seed', 0, "Seed of the world's examples.")
  flags.DEFINE_bool('timing', True, 'Print the milliseconds per example first.')


def main(argv) -> None:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}; see --help')
  f = flags.FLAGS
  if f.num_examples < 1:
    raise errors.UserError(f'--num_examples must be >= 1, got {f.num_examples}')
  config = cli.load_config_flag(required=False)
  w = source.world_config(config) if config is not None else world.WorldConfig()
  if f.timing:
    print(f'train ({w.image_size} px, {w.audio_seconds:g} s, mixed): '
          f'{preview.ms_per_example(w, 200, f.seed):.2f} ms/example over 200 examples')
    big = dataclasses.replace(w, image_size=224)
    print(f'train (224 px, {w.audio_seconds:g} s, mixed): '
          f'{preview.ms_per_example(big, 50, f.seed):.2f} ms/example over 50 examples')
  png, txt = preview.write_preview(f.out_dir, w, f.num_examples, f.seed)
  print(f'wrote {png} (image | class map | spectrogram per example, row-major) and {txt}')
  with open(txt) as lines:
    print(lines.read(), end='')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
