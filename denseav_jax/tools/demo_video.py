"""A short demo video of the synthetic world: scenes of its retrieval set shown one after
another, each for one model clip while its spoken (or sound) caption plays.

  python -m denseav_jax.tools.demo_video --out demo.mp4 [--scenes 4] [--modality speech]
      [--config configs/synthetic.py] [--fps 10]

Feed it to `python -m denseav_jax.predict --checkpoint RUN --config configs/synthetic.py
--video demo.mp4 --out heat.mp4` to watch the named objects light up as they are named.
Needs PyAV (pip install -e .[video]).
"""

import os

from absl import flags

from denseav_jax import cli
from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.inference import demo_app


def define_flags() -> None:
  flags.DEFINE_string('out', None, 'Output video (.mp4); required.')
  flags.DEFINE_integer('scenes', 4, 'Scenes shown, one model clip each.')
  flags.DEFINE_enum('modality', 'speech', ['speech', 'sound', 'mixed'], 'Caption kind.')
  flags.DEFINE_string('config', 'configs/synthetic.py', 'Config file[:variant] whose world '
                      'and input geometry to use.')
  flags.DEFINE_float('fps', 10.0, 'Video frames per second.')
  flags.DEFINE_integer('first', 0, 'First scene of the retrieval set.')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.out:
    raise errors.UserError('--out is required (python -m denseav_jax.tools.demo_video --out '
                           'demo.mp4)')
  info = demo_app.synthetic_video(configs.load(f.config), f.out, f.scenes, f.modality, f.fps,
                                 f.first)
  for line in info['scenes']:
    print(line)
  print(f'wrote {os.path.abspath(f.out)} ({info["seconds"]:.1f} s)')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
