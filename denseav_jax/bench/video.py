"""Peak memory of `predict --video` against the video's length.

  python -m denseav_jax.bench.video [--seconds 60,600] [--width 1280] [--height 720]
      [--fps 10] [--rate 44100] [--config configs/synthetic.py:runlocal] [--out FILE.json]

For each length it writes a synthetic video with PyAV (H.264 at --width x --height and --fps,
a square moving over a gradient; stereo AAC at --rate Hz, tones with pauses), then runs
inference.video.predict_video on it (at --fps, the command's frame rate) in a fresh process
and reports that process's peak resident memory (sampled every 50 ms, and the kernel's
high-water mark), its resident memory once the model was ready, and the seconds taken.
The model is --config's, randomly initialised (memory does not depend on the weights; the
default, the small synthetic model, keeps a 10-minute video to minutes of CPU). The
numbers say whether memory grows with the length: the frames are streamed, so it should
not. Needs PyAV (pip install -e .[video]). Run it alone on the machine.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.bench import common as bench_common
from denseav_jax.bench.eval import PeakRSS, high_water_bytes, rss_bytes

MODULE = 'denseav_jax.bench.video'


def define_flags() -> None:
  flags.DEFINE_list('seconds', ['60', '600'], 'Video lengths to measure, in seconds.')
  flags.DEFINE_integer('width', 1280, 'Width of the generated videos.')
  flags.DEFINE_integer('height', 720, 'Height of the generated videos.')
  flags.DEFINE_float('fps', 10.0, 'Frame rate of the generated videos and of predict '
                     '--video_fps.')
  flags.DEFINE_integer('rate', 44100, 'Sample rate of their (stereo) sound.')
  flags.DEFINE_string('config', 'configs/synthetic.py:runlocal', 'Config file[:variant] of '
                      'the model (randomly initialised).')
  flags.DEFINE_string('out', '', 'Write the figures as JSON here.')
  flags.DEFINE_string('measure', '', 'Internal: measure predict --video on this file in '
                      'this process and print the figures as JSON.')


def synthetic_video(path: str, seconds: float, width: int, height: int, fps: float,
                    rate: int) -> str:
  """Writes `seconds` of synthetic video (frames and sound generated as they are written,
  so memory does not grow with the length)."""
  from denseav_jax.inference import video_io  # pylint: disable=g-import-not-at-top
  n = int(round(seconds * fps))
  yy, xx = np.mgrid[0:height, 0:width]
  background = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                         np.full_like(xx, 60)], -1).astype(np.uint8)
  side = max(8, min(width, height) // 4)

  def frames():
    for k in range(n):
      frame = background.copy()
      x = int((k * 7) % max(width - side, 1))
      y = int((height - side) // 2 + (height // 4) * np.sin(k / fps))
      frame[y:y + side, x:x + side] = (250, 220, 40)
      yield frame

  def sound(block=rate):  # One second at a time: a tone for 0.7 s, then a pause.
    total = int(round(seconds * rate))
    for start in range(0, total, block):
      t = (start + np.arange(min(block, total - start))) / rate
      on = (t % 1.0) < 0.7
      f = 220.0 * (1 + (np.floor(t) % 4))
      left = 0.4 * np.sin(2 * np.pi * f * t) * on
      yield np.stack([left, 0.5 * left], 1).astype(np.float32)

  return video_io.write_video(path, frames(), fps, sound(), rate)


def measure(path: str, args) -> dict:
  """predict_video on `path` in this process: seconds, resident memory before and peak."""
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax import configs  # pylint: disable=g-import-not-at-top
  from denseav_jax.inference import video  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  config = configs.load(args.config)
  model = denseav.build_model(config)
  params = jax.jit(lambda k: params_lib.init_params(config, model, k))(jax.random.key(0))
  jax.block_until_ready(params)
  ready = rss_bytes()
  with tempfile.TemporaryDirectory() as tmp, PeakRSS() as peak:
    t0 = time.time()
    info = video.predict_video(model, params, config, path, os.path.join(tmp, 'heat.mp4'),
                               fps=args.fps)
    seconds = time.time() - t0
  return dict(ready_bytes=ready, peak_bytes=peak.peak, high_water_bytes=high_water_bytes(),
              predict_s=seconds, frames=info['frames'], duration=info['duration'],
              clips=info['clips'])


HEADER = (f'{"video s":>8} {"frames":>7} {"predict s":>10} {"ready GiB":>10} {"peak GiB":>9} '
          f'{"high-water GiB":>15}')


def format_row(e) -> str:
  return (f'{e["seconds"]:>8g} {e["frames"]:>7} {e["predict_s"]:>10.1f} '
          f'{e["ready_bytes"] / 2**30:>10.3f} {e["peak_bytes"] / 2**30:>9.3f} '
          f'{e["high_water_bytes"] / 2**30:>15.3f}')


def main(argv):
  bench_common.no_arguments(argv)
  errors.require('av', 'video', 'the video benchmark')
  args = bench_common.args_from_flags(seconds=[float(s) for s in flags.FLAGS.seconds])
  if args.measure:
    print(json.dumps(measure(args.measure, args)), flush=True)
    return None
  if not args.seconds or min(args.seconds) <= 0:
    raise errors.UserError(f'--seconds={",".join(flags.FLAGS.seconds)}: positive lengths')
  entries = []
  with tempfile.TemporaryDirectory() as tmp:
    for seconds in args.seconds:
      path = os.path.join(tmp, f'synthetic_{seconds:g}s.mp4')
      t0 = time.time()
      synthetic_video(path, seconds, args.width, args.height, args.fps, args.rate)
      made_s = time.time() - t0
      r = subprocess.run(
          [sys.executable, '-m', MODULE, '--measure', path, '--config', args.config,
           '--fps', str(args.fps)], capture_output=True, text=True, check=False)
      if r.returncode != 0:
        raise errors.UserError(f'measuring {seconds:g} s failed: '
                               f'{(r.stderr.strip() or r.stdout.strip())[-2000:]}')
      e = dict(json.loads(r.stdout.strip().splitlines()[-1]), seconds=seconds,
               width=args.width, height=args.height, fps=args.fps, rate=args.rate,
               config=args.config, input_bytes=os.path.getsize(path), generate_s=made_s,
               cores=bench_common.cores())
      os.unlink(path)
      entries.append(e)
      print(format_row(e), flush=True)
      bench_common.write_json(args.out, entries)
  print(f'\n{args.width}x{args.height} at {args.fps:g} fps, stereo {args.rate} Hz, model '
        f'{args.config}, {bench_common.cores()} cores; peak = resident memory of the '
        'process running predict_video')
  bench_common.print_table(HEADER, entries, format_row, args.out)
  return entries


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
