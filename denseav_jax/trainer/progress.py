"""What a run reports while it trains: the console line, TensorBoard scalars and a JSON
lines file of every logged step (process 0 only; docs/training.md#observability)."""

import json
import os
import time

import numpy as np

from denseav_jax import io as io_lib
from denseav_jax.losses import regularisers
from denseav_jax import tb

METRICS_FILE = 'train_metrics.jsonl'


def fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def non_finite(metrics: dict[str, float]) -> list[str]:
  return sorted(k for k, v in metrics.items() if not np.isfinite(v))


class Progress:
  """Times the loop (step time, time waiting for data) and writes the reports."""

  def __init__(self, workdir: str, config, first_step: int, is_main: bool,
               peak_flops: float | None = None):
    self.config, self.is_main = config, is_main
    # MFU (trainer/mfu.py): the device's peak and the step's FLOPs per device, when known.
    self.peak_flops, self.flops_per_step = peak_flops, None
    self.writer = tb.Writer(workdir) if is_main else tb.NullWriter()
    self.path = os.path.join(workdir, METRICS_FILE)
    self.first_step = first_step
    self.t_start = self.t_log = time.time()
    self.step_log = first_step
    self.data_wait = 0.0  # Seconds spent in next(iterator) since the last report.
    # An object (gs://) cannot be appended to: it is rewritten whole from this copy.
    self._object: bytes | None = None
    if is_main and io_lib.is_url(self.path):
      self._object = io_lib.read_bytes(self.path) if io_lib.exists(self.path) else b''
      if self._object and not self._object.endswith(b'\n'):
        self._object += b'\n'
    elif is_main and os.path.exists(self.path) and os.path.getsize(self.path):
      with open(self.path, 'rb+') as f:  # A run killed mid-line: start on a fresh line.
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          f.write(b'\n')

  def report(self, step: int, metrics: dict[str, float], extra: dict[str, float],
             data_stats: dict[str, float]) -> None:
    """One logged step: console, TensorBoard, train_metrics.jsonl."""
    now = time.time()
    c = self.config
    elapsed = max(now - self.t_log, 1e-9)
    steps = max(step - self.step_log, 1)
    ex_s = steps * c.batch_size / elapsed
    sec_per_step = (now - self.t_start) / max(step - self.first_step, 1)
    wait = self.data_wait / elapsed
    eta = sec_per_step * (c.num_train_steps - step)
    timing = {'examples_per_s': ex_s, 'step_time_s': elapsed / steps,
              'data_wait_fraction': wait}
    mfu = ''
    if self.peak_flops and self.flops_per_step:
      timing['mfu'] = self.flops_per_step / (elapsed / steps) / self.peak_flops
      mfu = f' | MFU {100 * timing["mfu"]:.1f}%'
    if self.is_main:
      # The terms that make up the loss: the contrastive one and the weighted regularisers
      # (TensorBoard and the JSON lines get every term, weighted or not).
      shown = {c.loss.type} | {name for name in regularisers.REGULARISERS
                               if float(c.loss.weights[name])}
      terms = ' '.join(f'{k[5:]} {v:.4g}' for k, v in sorted(metrics.items())
                       if k.startswith('loss_') and k[5:] in shown)
      print(f'step {step}/{c.num_train_steps} loss {metrics["loss"]:.4f}'
            + (f' ({terms})' if terms else '')
            + f' | phase {int(extra["phase"])} lr {extra["lr"]:.3g} | {ex_s:.1f} ex/s{mfu}'
            f' | data wait {100 * wait:.0f}% | ETA {fmt_time(eta)}', flush=True)
      self.writer.scalars(step, {f'train/{k}': v for k, v in metrics.items()}
                          | {f'train/{k}': v for k, v in (extra | timing).items()}
                          | data_stats)
      line = json.dumps({'step': step, **metrics, **extra, **timing, 'time': now}) + '\n'
      if self._object is not None:
        self._object += line.encode('utf-8')
        io_lib.write_bytes(self.path, self._object)
      else:
        with open(self.path, 'a', encoding='utf-8') as f:
          f.write(line)
    self.t_log, self.step_log, self.data_wait = now, step, 0.0

  def close(self) -> None:
    self.writer.close()


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """The logged steps of a workdir's train_metrics.jsonl; a step logged twice (re-run after
  a resume) keeps its last record."""
  out = {}
  path = os.path.join(workdir, METRICS_FILE)
  if io_lib.exists(path):
    for line in io_lib.read_text(path).splitlines():
      line = line.strip()
      if line:
        try:
          rec = json.loads(line)
        except ValueError:  # A line cut short by a crash.
          continue
        out[int(rec['step'])] = rec
  return out
