"""Evaluation at full size: the time of each part and the peak host memory.

  python -m denseav_jax.bench.eval [--num_retrieval 1000] [--num_segmentation 500]
      [--config configs/denseav.py] [--batch_size 8] [--dtype float32] [--out FILE.json]

Runs the evaluation suite with the full-size DenseAV model (configs/denseav.py: DINO ViT-S/8
at 224 x 224, HuBERT-Large on 10.26 s clips; randomly initialised: the cost does not depend
on the weights) on sets of the built-in synthetic world rendered at that size: retrieval
on --num_retrieval caption/image pairs (the N x N score matrix through the sharded
similarity operator) and Speech-Prompted segmentation (basic and advanced heat maps) on
--num_segmentation examples. Figures are off (they add a few examples' embedding).

Prints, per part, the seconds, the clips embedded per second and the peak resident memory
of the process while it ran (sampled every 50 ms, and the kernel's high-water mark). On a
CPU the devices' buffers are host memory too, so this counts the retrieval features kept
on the devices (N x 28 x 28 x 384 float32: 1.2 GB at N = 1,000). With --out, writes
{retrieval_s, segmentation_s, peak_bytes, ...}. Run it alone on the machine.
"""

import os
import resource
import threading
import time

from absl import flags
import jax

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.bench import common as bench_common


def define_flags() -> None:
  flags.DEFINE_integer('num_retrieval', 1000, 'Caption/image pairs of the retrieval set (0: '
                       'skip retrieval).')
  flags.DEFINE_integer('num_segmentation', 500, 'Examples of the Speech-Prompted set (0: '
                       'skip segmentation).')
  flags.DEFINE_string('config', 'configs/denseav.py', 'Config file[:variant] of the model '
                      '(default: the full-size DenseAV).')
  flags.DEFINE_integer('batch_size', 8, 'Global evaluation batch.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (float32: '
                    'bf16 is slow on CPUs).')
  flags.DEFINE_string('out', '', 'Write the figures as JSON here.')


def parse_flags(argv):
  """The parsed flags, the set sizes checked."""
  bench_common.no_arguments(argv)
  args = bench_common.args_from_flags()
  if args.num_retrieval < 0 or args.num_segmentation < 0:
    raise errors.UserError('--num_retrieval and --num_segmentation must be >= 0')
  if not (args.num_retrieval or args.num_segmentation):
    raise errors.UserError('nothing to do: both sizes are 0')
  return args


def rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def high_water_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


class PeakRSS:
  """The largest resident set seen while the block runs (sampled)."""

  def __init__(self, every_s: float = 0.05):
    self.every_s, self.peak = every_s, 0
    self._stop = threading.Event()

  def _sample(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      self._stop.wait(self.every_s)

  def __enter__(self):
    self.peak = rss_bytes()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def bench_config(args):
  from denseav_jax import configs  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = configs.load(args.config)
  config.model.dtype = args.dtype
  config.data.name = 'synthetic'
  config.update(eval_batch_size=args.batch_size, eval_num_figures=0)
  config.evals = ml_collections.ConfigDict()
  if args.num_retrieval:
    config.evals.retrieval = dict(type='retrieval', dataset='synthetic:retrieval',
                                  num_examples=args.num_retrieval)
  if args.num_segmentation:
    config.evals.speech_prompted = dict(
        type='prompted_segmentation', dataset='synthetic:speech_prompted',
        num_examples=args.num_segmentation, advanced=True)
  return config


def run(args):
  from denseav_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from denseav_jax.evals import suite as suite_lib  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  config = bench_config(args)
  mesh = sharding.mesh_from_config(config)
  model = denseav.build_model(config)
  t0 = time.time()
  abstract = params_lib.abstract_params(config, model, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  params = jax.jit(lambda k: params_lib.init_params(config, model, k),
                   out_shardings=shardings)(jax.random.key(0))
  jax.block_until_ready(params)
  init_s = time.time() - t0
  suite = suite_lib.Suite(config, model, mesh, shardings)
  entry = dict(
      device=str(jax.devices()[0].device_kind), num_devices=jax.device_count(),
      cores=bench_common.cores(), dtype=args.dtype, batch_size=args.batch_size,
      image_size=int(config.input.image_size), audio_samples=int(config.input.audio_samples),
      num_retrieval=args.num_retrieval, num_segmentation=args.num_segmentation,
      params_bytes=sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)),
      after_init_bytes=rss_bytes(), init_s=init_s)
  print(f'model ready in {init_s:.0f} s, {entry["params_bytes"] / 2**30:.2f} GiB of '
        f'parameters, resident {entry["after_init_bytes"] / 2**30:.2f} GiB', flush=True)
  with tempfile.TemporaryDirectory() as workdir:
    for name, n, key in (('retrieval', args.num_retrieval, 'retrieval'),
                         ('speech_prompted', args.num_segmentation, 'segmentation')):
      if not n:
        entry[f'{key}_s'] = None
        continue
      with PeakRSS() as peak:
        t0 = time.time()
        metrics = suite.run(params, 0, workdir, names=[name])
        seconds = time.time() - t0
      entry[f'{key}_s'] = seconds
      entry[f'{key}_clips_per_s'] = n / seconds
      entry[f'{key}_peak_bytes'] = peak.peak
      entry[f'{key}_metric'] = {k: v for k, v in metrics.items() if k.endswith(
          ('a2i_r1', 'advanced_ap'))}
      print(f'{key}: {n} examples in {seconds:.0f} s ({n / seconds:.2f} clips/s), peak '
            f'resident {peak.peak / 2**30:.2f} GiB', flush=True)
      bench_common.write_json(args.out, dict(entry, peak_bytes=high_water_bytes()))
  entry['peak_bytes'] = high_water_bytes()
  return entry


HEADER = (f'{"part":<13} {"examples":>9} {"seconds":>9} {"clips/s":>8} {"peak GiB":>9}')


def format_rows(e):
  rows = []
  for key, n in (('retrieval', e['num_retrieval']), ('segmentation', e['num_segmentation'])):
    if e.get(f'{key}_s') is not None:
      rows.append(f'{key:<13} {n:>9} {e[f"{key}_s"]:>9.1f} {e[f"{key}_clips_per_s"]:>8.3f} '
                  f'{e[f"{key}_peak_bytes"] / 2**30:>9.2f}')
  rows.append(f'{"process peak":<13} {"":>9} {"":>9} {"":>8} {e["peak_bytes"] / 2**30:>9.2f}')
  return '\n'.join(rows)


def main(argv):
  args = parse_flags(argv)
  entry = run(args)
  print(f'\n{entry["device"]} x {entry["num_devices"]}, {entry["cores"]} cores, '
        f'{entry["dtype"]}, batch {entry["batch_size"]}, {entry["image_size"]}^2 images, '
        f'{entry["audio_samples"]} samples a clip; peak = resident memory (devices\' buffers '
        'included on a CPU)')
  bench_common.write_json(args.out, entry)
  bench_common.print_table(HEADER, [entry], format_rows, args.out)
  return entry


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
