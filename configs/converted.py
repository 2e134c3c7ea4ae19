"""The config saved beside a converted (or exported) model: `configs/converted.py:DIR`.

DIR is the --output of `python -m denseav_jax.convert` (DIR/config.json + DIR/params).
The config sets init_from=DIR, so

  python -m denseav_jax.train --config configs/converted.py:DIR --workdir RUN
      starts training from the converted weights (fresh optimizer state), and
  python -m denseav_jax.evaluate --config configs/converted.py:DIR --workdir OUT
      evaluates them (OUT needs no checkpoint).

Any field can still be overridden with --config.KEY=VALUE.
"""

import os

from denseav_jax import errors
from denseav_jax.checkpoint import model_io


def get_config(arg: str | None = None):
  if not arg:
    raise errors.ConfigError('configs/converted.py needs the model directory: '
                     '--config configs/converted.py:DIR')
  directory = os.path.abspath(os.path.expanduser(arg))
  c = model_io.load_config(directory)
  c.init_from = directory
  return c
