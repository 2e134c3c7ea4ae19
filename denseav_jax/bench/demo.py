"""Seconds from the demo's button press to its heat map (docs/demo.md).

  python -m denseav_jax.bench.demo [--checkpoint DIR | --config CONFIG] [--repeats 3]
      [--out FILE.json]

Times the image + audio tab's handler (inference/demo_app.Demo.image_audio: reading the
files, the towers, the heat maps, drawing the figure) on a held-out pair of the synthetic
world: the first press (which compiles the model's programs) and the median of the next
--repeats. The model is --checkpoint's (a training workdir or a converted model), or
--config's at random initial weights (the time does not depend on the weights: e.g.
configs/denseav_language.py for the full-size model). Gradio's own part (upload, sending
the PNG back) is not included. Run it alone on the machine.
"""

import json
import os
import tempfile
import time

from absl import flags
import numpy as np

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax import io as io_lib


def define_flags() -> None:
  cli.define_flags(workdir=False)
  flags.DEFINE_string('checkpoint', None, 'A training workdir or a converted model folder.')
  flags.DEFINE_integer('repeats', 3, 'Presses timed after the first.')
  flags.DEFINE_string('out', '', 'Write the figures as JSON here.')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax.inference import demo_app  # pylint: disable=g-import-not-at-top
  from denseav_jax.inference import predict  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = cli.load_config_flag(required=False)
  t0 = time.time()
  if f.checkpoint:
    model, params, config = predict.load_model(f.checkpoint, config)
    source = f.checkpoint
  elif config is not None:
    model = denseav.build_model(config)
    params = jax.jit(lambda k: params_lib.init_params(config, model, k))(jax.random.key(0))
    source = f'{flags.FLAGS["config"].config_filename} (random weights)'
  else:
    raise errors.UserError('give --checkpoint DIR or --config CONFIG')
  load_s = time.time() - t0
  if f.repeats < 1:
    raise errors.UserError(f'--repeats={f.repeats} must be >= 1')
  demo = demo_app.Demo(model, params, config, source)
  with tempfile.TemporaryDirectory() as tmp:
    examples = demo_app.write_examples(config, tmp, pairs=1)
    _, img, wav, _ = examples['pairs'][0]
    times = []
    for _ in range(1 + f.repeats):
      t = time.time()
      result = demo.image_audio(img, wav)
      times.append(time.time() - t)
      if result.output is None:
        raise errors.UserError(f'the demo answered: {result.message}')
  out = dict(model=source, devices=str(jax.devices()[0].device_kind), load_s=load_s,
             first_s=times[0], median_s=float(np.median(times[1:])), times=times,
             image_size=int(config.input.image_size),
             clip_seconds=int(config.input.audio_samples) / int(config.input.sample_rate))
  print(f'{source}: model ready in {load_s:.1f} s; button to heat map: first press '
        f'{times[0]:.2f} s (compiles), then {out["median_s"]:.2f} s (median of {f.repeats}); '
        f'{out["devices"]}', flush=True)
  if f.out:
    io_lib.write_json(f.out, out)
    print(f'Wrote {os.path.abspath(f.out)}')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
