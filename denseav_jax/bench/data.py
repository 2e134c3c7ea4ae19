"""Benchmark: examples/s of the training input pipeline beside what the training step eats.

    python -m denseav_jax.bench.data [--examples 512] [--batch 32] [--threads N]
        [--datasets synthetic,places_audio_raw,places_audio_prepared] [--out results.json]

Inputs, all through `data.pipeline.train_iterator` with the full-size DenseAV config
(configs/denseav.py: 224 x 224 images, 164,200-sample clips, the release's transforms:
RandomResizedCrop + flip + colour jitter + greyscale, quad mixup 0.1, negative-audio
splicing, extra audio masking):
* synthetic:              the built-in world rendered at 224 x 224 (its own augmentation);
* places_audio_raw:       a generated Places Audio layout (`testing.fixtures.places_audio`:
                          --examples 256 x 256 JPEGs and 8-10.5 s 16 kHz WAVs) read raw;
* places_audio_prepared:  the same fixture after `data.prepare` (array_record).

For each input: `pipeline_examples_per_s`, the threaded pipeline's rate per host (this
process: --threads Grain threads, default every core) over --batches batches after two
warm-up batches, the best of --repeats runs interleaved across the inputs (all runs in
`pipeline_examples_per_s_runs`; this VM's speed varies by tens of percent over minutes);
and where one thread's time goes, in ms per example (`stages_ms`): reading
and decoding records (`read_decode`: files or records, JPEG decode, audio decode and
resampling), `augment` (the image transforms), `splice` (negative audio), `mixup`
(composing the mixed image), `pad_mask` (padding / cutting, extra masking), `other`, and
`batching` (stacking the examples of a batch).

`train_step_examples_per_s`: the full-size training step (DINO ViT-S/8 + HuBERT-Large,
forward + backward + Adam, at --train_batch, the loss through the scalable similarity
operator) on this machine's first device, compiled ahead of time and timed over
--train_steps steps, after the pipelines (its ~10 GB of buffers slowed the pipelines
measured after it); the same figure on every row. `--small` runs the tiny `runlocal`
model and small inputs (smoke tests). `--out` is rewritten after each input.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time

from absl import flags
import numpy as np

from denseav_jax import cli
from denseav_jax import configs
from denseav_jax.bench import common as bench_common

DATASETS = ('synthetic', 'places_audio_raw', 'places_audio_prepared')


def define_flags() -> None:
  bench_common.define_names('datasets', DATASETS, DATASETS, 'inputs to measure')
  flags.DEFINE_integer('examples', 512, 'Places fixture size')
  flags.DEFINE_integer('batch', 32, 'pipeline batch (one host)')
  flags.DEFINE_integer('batches', 8, 'timed batches per input')
  flags.DEFINE_integer('repeats', 3, 'timed runs per input (best reported)')
  flags.DEFINE_integer('threads', 0, 'Grain threads (0: every core)')
  flags.DEFINE_integer('profile_examples', 64, 'examples timed stage by stage in one thread')
  flags.DEFINE_integer('train_batch', 2, 'batch of the timed training step')
  flags.DEFINE_integer('train_steps', 2, 'timed training steps')
  flags.DEFINE_boolean('no_train_step', False, 'skip the training step')
  flags.DEFINE_string('workdir', '', 'where the fixture goes (default: a temp dir)')
  flags.DEFINE_boolean('small', False, 'tiny model and inputs (smoke test)')
  flags.DEFINE_string('out', '', 'JSON file: a list, one object per input')


def parse_flags(argv):
  """The parsed flags, --datasets checked."""
  bench_common.no_arguments(argv)
  return bench_common.args_from_flags(datasets=bench_common.names('datasets', DATASETS))


def make_config(args, dataset: str, raw: str, prepared: str):
  c = configs.load('configs/denseav.py' + (':runlocal' if args.small else ''))
  if args.small:  # Smaller inputs, the same transforms.
    c.input.update(image_size=64, audio_samples=48_000)
  c.batch_size = args.batch
  c.data.num_threads = args.threads or bench_common.cores()
  if dataset == 'synthetic':
    c.data.name = 'synthetic'
    c.data.update(image_aug=False, quad_mixup=0.0, neg_audio=False, extra_audio_masking=False)
  else:
    c.data.name = 'places_audio'
    c.data.raw_dir, c.data.prepared_dir = (raw, '') if dataset.endswith('raw') else ('', prepared)
  return c


# ------------------------------------------------------------------------- stages

@contextlib.contextmanager
def _stage_timers(totals: dict[str, float]):
  """Wraps the pipeline's pieces with timers (exclusive of nested timed pieces)."""
  from denseav_jax.data import examples  # pylint: disable=g-import-not-at-top
  from denseav_jax.data import transforms  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.sources import base  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.synthetic import source as synthetic_source  # pylint: disable=g-import-not-at-top
  stack: list[list[float]] = []
  me = threading.get_ident()  # Only this thread is timed (other iterators may still prefetch).

  def timed(fn, stage):
    def wrapper(*a, **kw):
      if threading.get_ident() != me:
        return fn(*a, **kw)
      stack.append([0.0])
      t0 = time.perf_counter()
      try:
        return fn(*a, **kw)
      finally:
        dt = time.perf_counter() - t0
        nested = stack.pop()[0]
        totals[stage] = totals.get(stage, 0.0) + dt - nested
        if stack:
          stack[-1][0] += dt
    return wrapper

  patches = [(base.RawSource, 'read', 'read_decode'), (base.RawSource, 'audio', 'read_decode'),
             (base.PreparedSource, 'read', 'read_decode'),
             (base.PreparedSource, 'audio', 'read_decode'),
             (synthetic_source.SyntheticSource, 'read', 'read_decode'),
             (transforms, 'train_image', 'augment'), (transforms, 'eval_image', 'augment'),
             (transforms, 'plan_negative_splice', 'splice'),
             (transforms, 'apply_splice', 'splice'), (transforms, 'quad_mixup', 'mixup'),
             (transforms, 'bg_mixup', 'mixup'), (transforms, 'patch_mixup', 'mixup'),
             (transforms, 'fit_length', 'pad_mask'), (transforms, 'extra_masking', 'pad_mask'),
             (examples, 'train_example', 'other')]
  saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
  try:
    for obj, name, stage in patches:
      setattr(obj, name, timed(getattr(obj, name), stage))
    yield
  finally:
    for obj, name, fn in saved:
      setattr(obj, name, fn)


def profile_stages(config, n: int) -> dict[str, float]:
  """ms per example by stage, in one thread (no Grain), plus `batching`."""
  from denseav_jax.data import examples, pipeline, sources  # pylint: disable=g-import-not-at-top
  totals: dict[str, float] = {}
  make = pipeline.TrainExamples(sources.make(config, 'train'), examples.Spec.from_config(config),
                                config.seed)
  make(10**6)  # Warm caches (file index, speech clips) outside the timing.
  with _stage_timers(totals):
    out = [make(g) for g in range(n)]
  t0 = time.perf_counter()
  for i in range(0, n, config.batch_size):
    chunk = out[i:i + config.batch_size]
    {k: np.stack([e[k] for e in chunk]) for k in chunk[0]}
  totals['batching'] = time.perf_counter() - t0
  return {k: round(1e3 * v / n, 3) for k, v in sorted(totals.items())}


def pipeline_rate(config, batches: int) -> float:
  from denseav_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.train_iterator(config)
  for _ in range(2):
    next(it)
  t0 = time.perf_counter()
  n = sum(len(next(it)['image']) for _ in range(batches))
  rate = n / (time.perf_counter() - t0)
  it.close()  # Stops its threads before the next input is measured.
  return rate


# --------------------------------------------------------------------- train step

def train_step_rate(args) -> dict[str, float]:
  """Examples/s of the full-size training step on the first device (batch --train_batch)."""
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax.parallel import sharding
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.trainer import optim, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  c = configs.load('configs/denseav.py' + (':runlocal' if args.small else ''))
  c.batch_size = args.train_batch
  c.model.dtype = 'float32'  # As measured before configs/denseav.py moved to bf16 (CPU).
  c.data.update(neg_audio=True, quad_mixup=0.1, extra_audio_masking=True)
  mesh = sharding.make_mesh((('data', 1),), devices=jax.devices()[:1])
  model = denseav.build_model(c)
  tx = optim.make_optimizer(c)
  t0 = time.perf_counter()
  state, shardings = state_lib.create_state(c, model, tx, mesh)
  init_s = time.perf_counter() - t0
  step = step_lib.make_train_step(c, model, tx, mesh, shardings)
  rng = np.random.default_rng(0)
  s, n = c.input.image_size, c.input.audio_samples
  b = c.batch_size
  host = dict(image=rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
              audio=(0.1 * rng.standard_normal((b, n))).astype(np.float32),
              audio_len=np.full((b,), n, np.int32), source=np.zeros((b,), np.int32),
              audio_start=np.zeros((b,), np.int32),
              pos_mask=np.ones((b, n), np.float32), image_mask=np.ones((b, s, s), np.uint8))
  batch = sharding.put_batch(host, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(args.train_steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - t0) / args.train_steps
  return dict(train_step_examples_per_s=b / seconds, train_step_s=seconds,
              train_init_s=init_s, train_compile_s=compile_s,
              train_device=bench_common.device_description(jax.devices()[0]))


# --------------------------------------------------------------------------- main

def main(argv):
  args = parse_flags(argv)
  from denseav_jax.testing import fixtures  # pylint: disable=g-import-not-at-top
  from denseav_jax.data import prepare
  work = args.workdir or tempfile.mkdtemp(prefix='bench_data_')
  raw, prepared = os.path.join(work, 'raw'), os.path.join(work, 'prepared')
  needs_places = any(d.startswith('places') for d in args.datasets)
  if needs_places and not os.path.isdir(os.path.join(raw, 'PlacesAudio_400k_distro')):
    t0 = time.perf_counter()
    fixtures.places_audio(raw, num_train=args.examples, num_val=2, faults=False,
                          seconds=(8.0, 10.5))
    print(f'generated a {args.examples}-example Places Audio layout in {raw} '
          f'({time.perf_counter() - t0:.1f} s)', flush=True)
  if 'places_audio_prepared' in args.datasets:
    prepare.prepare('places_audio', raw, prepared, splits=['train'], examples_per_shard=128,
                    log=lambda line: print(line, flush=True), progress_every=60)
  configs = {d: make_config(args, d, raw, prepared) for d in args.datasets}
  rates = {d: [] for d in args.datasets}
  profiles = {d: [] for d in args.datasets}
  entries = []
  for r in range(args.repeats):  # Interleaved, so that load from elsewhere hits all alike.
    for dataset, config in configs.items():
      profiles[dataset].append(profile_stages(config, args.profile_examples))
      rates[dataset].append(pipeline_rate(config, args.batches))
      print(f'[{r + 1}/{args.repeats}] {dataset}: {rates[dataset][-1]:.1f} ex/s with '
            f'{config.data.num_threads} threads; one thread, ms per example: '
            f'{profiles[dataset][-1]}', flush=True)
    entries = []
    for dataset, config in configs.items():
      stages = min(profiles[dataset], key=lambda p: sum(p.values()))
      entries.append(dict(
          dataset=dataset, pipeline_examples_per_s=max(rates[dataset]),
          pipeline_examples_per_s_runs=[round(x, 2) for x in rates[dataset]],
          train_step_examples_per_s=None, threads=config.data.num_threads,
          cores=bench_common.cores(), batch=config.batch_size,
          image_size=config.input.image_size, audio_samples=config.input.audio_samples,
          stages_ms=stages, one_thread_ms_per_example=round(sum(stages.values()), 3),
          transforms=dict(image_aug=config.data.image_aug, quad_mixup=config.data.quad_mixup,
                          neg_audio=config.data.neg_audio,
                          extra_audio_masking=config.data.extra_audio_masking)))
    bench_common.write_json(args.out, entries)
  if not args.no_train_step:  # Last: its memory must not weigh on the pipelines' figures.
    step = train_step_rate(args)
    print(f'train step: {step["train_step_examples_per_s"]:.3f} ex/s '
          f'({step["train_step_s"]:.2f} s/step at batch {args.train_batch}, compile '
          f'{step["train_compile_s"]:.0f} s)', flush=True)
    for e in entries:
      e.update(step)
    bench_common.write_json(args.out, entries)

  def row(e):
    ts = e['train_step_examples_per_s']
    ratio = f'{e["pipeline_examples_per_s"] / ts:8.0f}x' if ts else '       -'
    return (f'{e["dataset"]:24s} {e["pipeline_examples_per_s"]:10.1f} '
            f'{ts if ts is not None else float("nan"):12.3f} {ratio} '
            f'{e["one_thread_ms_per_example"]:9.2f}  ' +
            ' '.join(f'{k} {v:.2f}' for k, v in e['stages_ms'].items()))
  bench_common.print_table(
      'dataset                  pipeline/s  train_step/s  pipe/step  1-thr ms  stages (ms/ex)',
      entries, row, args.out)
  return entries


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
