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
import numpy as np

from denseav_jax import cli
from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.data.synthetic import example
from denseav_jax.data.synthetic import source


def make_demo(config, out_path: str, scenes: int = 4, modality: str = 'speech',
              fps: float = 10.0, first: int = 0) -> dict:
  """Writes the demo video; returns its scenes' descriptions and duration."""
  from denseav_jax.inference import video_io  # pylint: disable=g-import-not-at-top
  world = source.world_config(config)
  src = source.SyntheticAVSource('retrieval', world, seed=int(config.seed),
                                 modality=modality, num_examples=first + scenes)
  clip = int(config.input.audio_samples)
  frames_per_scene = int(round(clip / int(config.input.sample_rate) * fps))
  up = max(1, 256 // int(config.input.image_size))  # Shown at >= 256 px (nearest).
  frames, audio, lines = [], [], []
  for i in range(first, first + scenes):
    ex = src[i]
    frames += [ex['image'].repeat(up, 0).repeat(up, 1)] * frames_per_scene
    audio.append(np.asarray(ex['audio'], np.float32)[:clip])
    lines.append(example.describe(ex))
  video_io.write_video(out_path, np.stack(frames), fps, np.concatenate(audio),
                    int(config.input.sample_rate))
  return dict(path=out_path, scenes=lines, seconds=len(frames) / fps)


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
  info = make_demo(configs.load(f.config), f.out, f.scenes, f.modality, f.fps, f.first)
  for line in info['scenes']:
    print(line)
  print(f'wrote {os.path.abspath(f.out)} ({info["seconds"]:.1f} s)')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
