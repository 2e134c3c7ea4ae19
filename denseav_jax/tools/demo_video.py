"""A short demo video of the synthetic world: scenes of its retrieval set shown one after
another, each for one model clip while its spoken (or sound) caption plays.

  python -m denseav_jax.tools.demo_video --out demo.mp4 [--scenes 4] [--modality speech]
      [--config configs/synthetic.py] [--fps 10]

Feed it to `python -m denseav_jax.predict --checkpoint RUN --config configs/synthetic.py
--video demo.mp4 --out heat.mp4` to watch the named objects light up as they are named.
Needs PyAV (pip install -e .[video]).
"""

import argparse
import os
import sys

import numpy as np

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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='Output video (.mp4).')
  p.add_argument('--scenes', type=int, default=4)
  p.add_argument('--modality', default='speech', choices=('speech', 'sound', 'mixed'))
  p.add_argument('--config', default='configs/synthetic.py',
                 help='Config file[:variant] whose world and input geometry to use.')
  p.add_argument('--fps', type=float, default=10.0)
  p.add_argument('--first', type=int, default=0, help='First scene of the retrieval set.')
  args = p.parse_args(argv)
  from denseav_jax import configs  # pylint: disable=g-import-not-at-top
  from denseav_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    info = make_demo(configs.load(args.config), args.out, args.scenes,
                     args.modality, args.fps, args.first)
  except errors.DenseAVError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for line in info['scenes']:
    print(line)
  print(f'wrote {os.path.abspath(args.out)} ({info["seconds"]:.1f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
