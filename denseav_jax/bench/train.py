"""Benchmark: the full DenseAV training step, JAX beside the release's step in PyTorch.

    python -m denseav_jax.bench.train [--small] [--batch 2] [--repeats 3] [--out FILE.json]

The step (configs/denseav.py, phase 2 of the recipe, fp32 compute - the config's bf16 is
switched off - on one device): DINO ViT-S/8 with LoRA (rank 8, alpha 32) on every qkv,
its branch without gradient (`model.image_grad=False`, the release's no_grad); HuBERT-Large
fine-tuned in train mode; the `image_linear` / `audio_sa_3_3_pool_2` aligners; 2 x 2
average pooling of the image map; misa similarity over the B x B batch (max over space,
mean over frequency, masked mean over time); the calibrator; symmetric InfoNCE plus the
release regularisers with the config's weights (tv 0.01, silence_l1 0.01, nonneg_pressure
0.01, neg_audio 0.01, mixup 0.1, cal_balance 0.1); Adam (eps 1e-7, the linear warm-up)
after clipping each parameter's gradient to norm 10 on its own. Inputs: 224 x 224 uint8
images and 164,200-sample clips with every batch key the config's data transforms give
(audio_start, pos_mask with a spliced-in negative piece, image_mask of a quad-mixup image),
random, the same arrays on both sides; half the clips are shorter and start later, so the
audio mask has padding.

* jax:   `trainer.step.make_train_step` (the trainer's own jitted step, state donated, the
         loss through the scalable similarity operator) on a 1-device mesh, compiled ahead
         of time (`compile_s`, never timed). XLA's CPU client uses every core. The image
         aligner and the LoRA adapters are in its Adam (zero gradients: no change), where
         torch's Adam skips them (no gradient at all); both leave them as they are.
* torch: `testing.torch_denseav.TrainStep`, a PyTorch re-statement of the release's
         LitAVAligner training step (same towers, aligners, loss, regularisers, clipping
         and Adam), with torch.set_num_threads(cores).

Both hold the same weights: a `TorchDenseAV` with random weights (LoRA B non-zero) is
converted with `conversion.denseav.model_params` into the JAX train state. Dropout, LoRA
dropout, LayerDrop and HuBERT's time masking are OFF on both sides (`--dropout off`,
default: a deterministic comparison); `--dropout release` turns the config's values on on
both sides (the losses then differ by the random draws and are not compared).

Parity: the first step's loss (`loss`, before any update) of both, and
`max_abs_loss_diff` = |jax - torch|; the per-term values in `loss_terms` (and
`max_abs_term_diff`). The sampled regularisers use the JAX step's own draws on the torch
side for that first step (nonneg_pressure's 250 x 250 random vectors, silence's 250 random
silent steps, derived from the step key exactly as trainer/step.py does); later torch steps
draw their own, as the release. silence_l1 only fires when the batch has 250 silent audio
steps (never at B = 2: 2 x 56 steps), so both sides skip it there.

Timing: one warm-up step each (the parity step, `warmup_s`), then `--repeats` steps,
INTERLEAVED (jax, torch, jax, ...) so that load from other processes hits both alike; the
BEST step is reported (`seconds`; all in `times`, `median_s`): steps_per_s = 1 / seconds,
examples_per_s = batch / seconds, `jax_over_torch` = the ratio of the two. `sys_s` /
`page_faults`: system CPU time and minor faults during the best step. `--heap reuse`
(default) re-executes under `bench.heap.TUNABLES` as bench.model does (both sides alike).
`--omp_wait passive` sets OMP_WAIT_POLICY=PASSIVE for torch's OpenMP threads: on a machine
that other processes load, their default spin-waiting made the small model's torch step
50-100x slower (measured: 2-3 s against 0.04 s on the 2-core VM); alone, it matters little.
Memory: `state_bytes` (the JAX train state: 3.9 GB at full size), `xla_temp_bytes` (the
compiled JAX step's temporary buffer, 5.0 GB at full size and batch 2) and `max_rss_bytes`
(the process's peak resident memory after the timed steps, both sides' buffers together:
the torch side adds its weights, gradients, Adam moments and activations, estimated at
~10 GB at full size). If one process cannot hold both, run `--impls jax` and `--impls torch` apart.

Checkpoints (after the steps; the torch model is freed first): the trained JAX state
(parameters + Adam moments, `state_bytes`) saved with
`checkpoint.train_checkpoints.TrainCheckpoints` into a temporary folder (`--ckpt_dir`),
`--save_repeats` times each way, interleaved:
`save_block_s_async` - how long `save()` blocks the training loop with async_save=True
(best), `save_total_s_async` - until `wait()` returns; `save_block_s_sync` - `save()` with
async_save=False (it returns when the files are written). Then one more async save with a
training step run while it writes (`step_s_during_async_save`, against the best `seconds`).
On the torch row: `save_block_s_sync` = torch.save of the weights + Adam state (what
Lightning's ModelCheckpoint writes, synchronously; `checkpoint_bytes`).

MFU (GPU only; null on CPU): XLA's FLOP count of the compiled JAX step
(`flops_per_step`, cost_analysis) / seconds / the device's dense TF32 tensor-core peak
(`peak_flops`: XLA's DEFAULT precision runs fp32 dots as TF32 on Ampere and later; torch is
set to allow TF32 too). The same FLOP count is used for the torch row. `--peak_tflops`
overrides the table.

`--small` shrinks everything with the same architecture (ViT depth 2 width 64 on 32 x 32
images; HuBERT-style conv front end with 32 channels, 2 layers of width 64; 1 s clips; code
dim 24) for smoke tests; `--image_depth` / `--audio_depth` cut the towers' depth at full
width (quick checks of the full-size shapes). `--out` is rewritten after each stage.

Code: this module is the command (flags, both models, the timed loop, the table); the step's
set-up (config, random batch, first-step draws, the torch model) is in bench/train_inputs.py
and the checkpoint figures in bench/train_checkpoints.py.
"""

import gc
import os
import platform
import resource
import statistics
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.conversion import denseav as denseav_conv
from denseav_jax.parallel import sharding
from denseav_jax.bench import common as bench_common
from denseav_jax.bench import heap
from denseav_jax.bench import model as bench_model
from denseav_jax.bench import train_checkpoints
from denseav_jax.bench import train_inputs
from denseav_jax.models import denseav
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

IMPLS = ('jax', 'torch')
# The torch step's loss weights (the release's names) <- their config.loss.weights terms.
LOSS_WEIGHTS = (('tv_weight', 'tv'), ('silence_l1', 'silence_l1'), ('silence_l2', 'silence_l2'),
                ('nonneg_pressure', 'nonneg_pressure'), ('neg_audio_weight', 'neg_audio'),
                ('mixup_weight', 'mixup'), ('cal_balance_weight', 'cal_balance'))
# Our metric names (trainer/step.py: loss_<term>) for the torch terms.
TERMS = ('nce', 'tv', 'neg_audio', 'mixup', 'silence_l1', 'silence_l2', 'nonneg_pressure',
         'cal_balance')
# Dense (no sparsity) TF32 tensor-core peak FLOP/s per GPU, by device_kind substring; the
# first match counts.
PEAK_TF32 = (('H200', 494.7e12), ('H100 PCIe', 378e12), ('H100 NVL', 417.5e12),
             ('H100', 494.7e12), ('A100', 156e12))


# ------------------------------------------------------------------ flags

def define_flags() -> None:
  bench_common.define_names('impls', IMPLS, IMPLS, 'implementations')
  flags.DEFINE_integer('batch', 2, 'examples per training step')
  flags.DEFINE_integer('repeats', 3, 'timed steps per implementation after one warm-up; the '
                       'best is reported')
  flags.DEFINE_integer('save_repeats', 2, 'checkpoint saves per mode (async, sync); 0 skips '
                       'the checkpoints')
  flags.DEFINE_string('ckpt_dir', None, 'folder for the temporary checkpoints (default: the '
                      'system temp dir)')
  flags.DEFINE_integer('threads', 0, 'torch threads (0: the cores this process may use)')
  flags.DEFINE_enum('dropout', 'off', ['off', 'release'], "'off': every dropout, LayerDrop "
                    "and time masking 0 on both sides (deterministic, the losses compared); "
                    "'release': the config's")
  flags.DEFINE_boolean('small', False, 'small towers and inputs of the same architecture '
                       '(smoke tests)')
  flags.DEFINE_integer('image_depth', 0, 'ViT depth (0: the config\'s)')
  flags.DEFINE_integer('audio_depth', 0, 'HuBERT depth (0: the config\'s)')
  flags.DEFINE_integer('seed', 0, 'the config\'s seed: weights, inputs and random draws')
  flags.DEFINE_float('peak_tflops', 0.0, 'device peak TFLOP/s for MFU (0: the table, GPUs '
                     'only)')
  flags.DEFINE_enum('omp_wait', 'default', ['default', 'passive'], "torch's OpenMP threads "
                    "between parallel regions: 'default' (spin a while, as installed) or "
                    "'passive' (OMP_WAIT_POLICY=PASSIVE: sleep; far steadier when other "
                    'processes load the cores)')
  bench_common.define_heap()
  flags.DEFINE_string('out', None, 'JSON file: a list, one object per implementation')


def parse_flags(argv):
  """The parsed flags, --impls checked, counts validated."""
  bench_common.no_arguments(argv)
  args = bench_common.args_from_flags(impls=bench_common.names('impls', IMPLS))
  if args.batch < 1 or args.repeats < 1 or args.save_repeats < 0:
    raise errors.UserError('--batch and --repeats must be positive, --save_repeats >= 0')
  return args


# ------------------------------------------------------------------ the JAX state

def jax_state(config, model, tx, mesh, torch_net):
  """The train state holding torch_net's weights (converted), and its shardings."""
  abstract, shardings = state_lib.abstract_state(config, model, tx, mesh)
  # A copy: on CPU, device_put of a numpy view of torch memory aliases it (zero-copy), and
  # the donated JAX state and torch's in-place Adam would then write into each other.
  sd = torch_net.released_state_dict()
  params = denseav_conv.model_params(sd, config)  # Checks every key and shape.
  del sd
  params = jax.device_put(params, shardings.params)
  jax.block_until_ready(params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  del abstract
  return state_lib.TrainState(step=step, params=params, opt_state=opt_state), shardings


def _cost_flops(compiled):
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops']) if cost and cost.get('flops') else None
  except Exception:  # pylint: disable=broad-except
    return None


def peak_flops(device, override_tflops: float):
  if override_tflops:
    return override_tflops * 1e12
  if device.platform != 'gpu':
    return None
  kind = getattr(device, 'device_kind', '')
  for name, peak in PEAK_TF32:
    if name in kind:
      return peak
  return None


def _nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------ output

HEADER = (f'{"impl":<6} {"batch":>5} {"steps/s":>8} {"ex/s":>8} {"best_s":>8} {"median_s":>8} '
          f'{"compile_s":>9} {"jax/torch":>9} {"loss":>10} {"|dloss|":>9} {"save_async":>10} '
          f'{"save_sync":>9} {"mfu":>6}')


def _fmt(v, spec, none='-'):
  return none if v is None else format(v, spec)


def format_row(e):
  ratio = e.get('jax_over_torch')
  return (f'{e["impl"]:<6} {e["batch"]:>5d} {e["steps_per_s"]:>8.4f} '
          f'{e["examples_per_s"]:>8.4f} {e["seconds"]:>8.3f} {e["median_s"]:>8.3f} '
          f'{_fmt(e.get("compile_s"), ".1f"):>9} '
          f'{("-" if ratio is None else f"{ratio:.2f}x"):>9} {_fmt(e.get("loss"), ".5f"):>10} '
          f'{_fmt(e.get("max_abs_loss_diff"), ".1e"):>9} '
          f'{_fmt(e.get("save_block_s_async"), ".3f"):>10} '
          f'{_fmt(e.get("save_block_s_sync"), ".3f"):>9} {_fmt(e.get("mfu"), ".3f"):>6}')


def _entry(impl, args, runs, warmup_s, common, **extra):
  ts = [r[0] for r in runs]
  i_best = int(np.argmin(ts))
  best = ts[i_best]
  e = dict(impl=impl, batch=args.batch, steps_per_s=1.0 / best, examples_per_s=args.batch / best,
           seconds=best, median_s=statistics.median(ts), times=ts, warmup_s=warmup_s,
           sys_s=runs[i_best][1], page_faults=runs[i_best][2], mfu=None, jax_over_torch=None,
           save_block_s_async=None, save_total_s_async=None, save_block_s_sync=None)
  e.update(extra)
  e.update(common)
  return e


# ------------------------------------------------------------------ main

def run(args):
  torch = bench_common.require('torch', 'python -m denseav_jax.bench.train (the PyTorch '
                               'training step it measures beside ours)')
  from denseav_jax.testing import torch_denseav  # pylint: disable=g-import-not-at-top
  threads = args.threads or bench_common.cores()
  torch.set_num_threads(threads)
  dev = jax.devices()[0]
  on_gpu = dev.platform == 'gpu'
  tdev = torch.device('cuda' if on_gpu and torch.cuda.is_available() else 'cpu')
  if 'torch' in args.impls and on_gpu and tdev.type != 'cuda':
    raise errors.UserError('JAX runs on GPU but this torch has no CUDA: install a CUDA torch '
                           'or pass --impls jax')
  if tdev.type == 'cuda':  # XLA's DEFAULT fp32 precision uses TF32 there too.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  config = train_inputs.bench_config(args)
  common = dict(threads=threads, repeats=args.repeats, small=args.small, dropout=args.dropout,
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'),
                jax_version=jax.__version__, torch_version=torch.__version__,
                glibc_tunables=heap.active(),
                shape=dict(image_size=config.input.image_size,
                           audio_samples=config.input.audio_samples,
                           image=dict(width=config.model.image.width,
                                      depth=config.model.image.depth,
                                      lora_rank=config.model.image.lora.rank),
                           audio=dict(width=config.model.audio.width,
                                      depth=config.model.audio.depth),
                           code_dim=config.model.code_dim))
  jax_dev = bench_model.jax_device_description()
  torch_dev = (f'torch {tdev.type} ({torch.get_num_threads()} threads, '
               f'{platform.processor() or platform.machine()})' if tdev.type == 'cpu'
               else f'torch cuda:{torch.cuda.get_device_name(0)}')
  print(f'{jax_dev}; {torch_dev}; jax {jax.__version__}, torch {torch.__version__}; batch '
        f'{args.batch}; best of {args.repeats} interleaved steps after a warm-up; dropout '
        f'{args.dropout}{"; SMALL model" if args.small else ""}; '
        f'GLIBC_TUNABLES={heap.active() or "(unset)"}', flush=True)

  # --- both models, same weights.
  t0 = time.perf_counter()
  net = train_inputs.torch_model(config)
  n_params = int(sum(p.numel() for p in net.parameters()))
  mesh = sharding.mesh_from_config(config, devices=[dev])
  model = denseav.build_model(config)
  tx = optim.make_optimizer(config, phase=2)
  state, shardings = jax_state(config, model, tx, mesh, net)
  host_batch = train_inputs.make_batch(config, args.batch, args.seed)
  batch = sharding.put_batch(host_batch, mesh)
  setup_s = time.perf_counter() - t0
  print(f'model: {n_params / 1e6:.1f} M parameters ({common["shape"]}); set-up and conversion '
        f'{setup_s:.1f} s', flush=True)

  compiled, compile_s, flops, temp_bytes = None, None, None, None
  if 'jax' in args.impls:
    train_step = step_lib.make_train_step(config, model, tx, mesh, shardings, phase=2)
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = _cost_flops(compiled)
    try:
      temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # pylint: disable=broad-except
      temp_bytes = None
    print(f'jax: compiled in {compile_s:.1f} s; XLA FLOPs per step {_fmt(flops, ".3e")}; '
          f'state {_nbytes(state) / 2**30:.2f} GiB, temporaries '
          f'{_fmt(temp_bytes and temp_bytes / 2**30, ".2f")} GiB', flush=True)
  peak = peak_flops(dev, args.peak_tflops)

  net = net.to(tdev)
  tbatch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(tdev) for k, v in host_batch.items()}
  weights = {k: float(config.loss.weights[term]) for k, term in LOSS_WEIGHTS}
  tstep = torch_denseav.TrainStep(
      net, lr=config.lr, warmup=config.warmup_steps, eps=config.adam_eps,
      clip=config.grad_clip_per_tensor, weights=weights, num_heads=config.model.num_heads,
      cal_init=config.sim.cal_init, image_pool=config.model.train_image_pool,
      num_samples=int(config.loss.num_samples))
  sync = torch.cuda.synchronize if tdev.type == 'cuda' else (lambda: None)

  holder = {'state': state}
  del state

  def jax_run():
    holder['state'], holder['metrics'] = compiled(holder['state'], batch)
    jax.block_until_ready((holder['state'], holder['metrics']))

  tout = {}

  def torch_run(**draws):
    tout['loss'], tout['terms'] = tstep(tbatch, **draws)
    sync()

  # --- warm-up = the parity step (step 0, before any update).
  entries = []
  warm = {}
  if 'jax' in args.impls:
    warm['jax'] = bench_model._timed(jax_run)[0]  # pylint: disable=protected-access
    jm = {k: float(v) for k, v in holder['metrics'].items()}
    jax_loss = jm['loss']
    jax_terms = {k: jm[f'loss_{k}'] for k in TERMS if f'loss_{k}' in jm}
    print(f'jax: first step {warm["jax"]:.2f} s, loss {jax_loss:.6f} {jax_terms}', flush=True)
  if 'torch' in args.impls:
    shapes = jax.eval_shape(lambda p, b: model.apply(
        {'params': p}, b['image'], b['audio'], b['audio_len']), holder['state'].params, batch)
    a_shape = shapes['audio_feats'].shape  # [B, 1, T, C]
    pool = config.model.train_image_pool
    i_shape = tuple(shapes['image_feats'].shape)
    i_shape = (i_shape[0], i_shape[1] // pool, i_shape[2] // pool, i_shape[3])
    nonneg, silence = train_inputs.first_step_draws(config, host_batch, a_shape[2], a_shape,
                                                    i_shape)
    warm['torch'] = bench_model._timed(  # pylint: disable=protected-access
        lambda: torch_run(nonneg_idx=nonneg, silence_idx=silence))[0]
    torch_loss = float(tout['loss'])
    torch_terms = {k: float(v) for k, v in tout['terms'].items()}
    print(f'torch: first step {warm["torch"]:.2f} s, loss {torch_loss:.6f} {torch_terms}',
          flush=True)
  parity = {}
  if set(args.impls) == set(IMPLS):
    common_terms = sorted(set(jax_terms) & set(torch_terms))
    diffs = {k: abs(jax_terms[k] - torch_terms[k]) for k in common_terms}
    comparable = args.dropout == 'off'
    parity = dict(max_abs_loss_diff=abs(jax_loss - torch_loss) if comparable else None,
                  max_abs_term_diff=max(diffs.values()) if comparable and diffs else None,
                  term_diffs=diffs if comparable else None)
    print(f'parity: |jax - torch| loss {_fmt(parity["max_abs_loss_diff"], ".3e")}, worst term '
          f'{_fmt(parity["max_abs_term_diff"], ".3e")} '
          f'{"" if comparable else "(dropout on: not compared)"}', flush=True)

  # --- timed steps, interleaved.
  runners = [(impl, fn) for impl, fn in (('jax', jax_run), ('torch', torch_run))
             if impl in args.impls]
  runs = {impl: [] for impl, _ in runners}
  for r in range(args.repeats):
    for impl, fn in runners:
      runs[impl].append(bench_model._timed(fn))  # pylint: disable=protected-access
      print(f'{impl} step {r + 1}/{args.repeats}: {runs[impl][-1][0]:.3f} s', flush=True)

  # Peak resident memory of the process so far (both implementations' buffers).
  common['max_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  if 'jax' in args.impls:
    e = _entry('jax', args, runs['jax'], warm['jax'], common, device=jax_dev,
               compile_s=compile_s, loss=jax_loss, loss_terms=jax_terms, flops_per_step=flops,
               peak_flops=peak, n_params=n_params, state_bytes=_nbytes(holder['state']),
               xla_temp_bytes=temp_bytes, **parity)
    if peak and flops:
      e['mfu'] = flops / e['seconds'] / peak
    entries.append(e)
  if 'torch' in args.impls:
    e = _entry('torch', args, runs['torch'], warm['torch'], common, device=torch_dev,
               compile_s=None, loss=torch_loss, loss_terms=torch_terms, flops_per_step=flops,
               peak_flops=peak if tdev.type == 'cuda' else None, n_params=n_params,
               attn_implementation=getattr(net.hubert.config, '_attn_implementation', None),
               **parity)
    if tdev.type == 'cuda' and peak and flops:
      e['mfu'] = flops / e['seconds'] / peak
    entries.append(e)
  if len(entries) == 2:
    ratio = entries[0]['examples_per_s'] / entries[1]['examples_per_s']
    entries[0]['jax_over_torch'] = entries[1]['jax_over_torch'] = ratio
  for e in entries:
    print(format_row(e), flush=True)
  bench_common.write_json(args.out, entries)

  # --- checkpoints: torch first, then free it before the JAX saves copy the state.
  if args.save_repeats:
    if 'torch' in args.impls:
      entries[-1].update(train_checkpoints.measure_torch_save(tstep, args))
      bench_common.write_json(args.out, entries)
    del tstep, net, tout, tbatch
    gc.collect()
    if 'jax' in args.impls:
      saves, holder['state'] = train_checkpoints.measure_jax_saves(
          holder['state'], config, mesh, args, compiled, batch)
      entries[0].update(saves)
      entries[0]['step_slowdown_during_async_save'] = (
          saves['step_s_during_async_save'] / entries[0]['seconds'])
      bench_common.write_json(args.out, entries)
  return entries


def main(argv):
  """Runs the benchmark (as the command, --heap reuse first restarts the process)."""
  args = parse_flags(argv)
  if args.omp_wait == 'passive':  # Read when torch (its libgomp) loads: before any import.
    if 'torch' in sys.modules:
      raise errors.UserError('--omp_wait passive must be set before torch is imported')
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
  bench_common.reexec_for_heap('denseav_jax.bench.train', jax.default_backend())
  entries = run(args)
  print('\nsteps/s = 1 / best step time; ex/s = batch / best step time; jax/torch = ratio of '
        'ex/s; loss = first step (same weights and inputs); |dloss| = |jax - torch| of it; '
        'save_async / save_sync = seconds checkpoint save() blocks the loop; mfu: GPU only',
        flush=True)
  bench_common.print_table(HEADER, entries, format_row, args.out)
  return entries


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
