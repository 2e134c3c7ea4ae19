"""bench.train's checkpoint figures: how long saving the train state blocks the training
loop, async against sync, and torch.save of the torch step's state (bench/train.py's
docstring, "Checkpoints")."""

import os
import shutil
import tempfile
import time

from absl import logging as absl_logging
import jax

from denseav_jax.bench import common as bench_common
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib


def measure_jax_saves(state, config, mesh, args, train_step, batch):
  """Save blocking times of the JAX state, async against sync (see the module doc)."""
  root = tempfile.mkdtemp(prefix='denseav_bench_ckpt_', dir=args.ckpt_dir)
  meta = dict(phase=2, data={}, rng=dict(seed=int(config.seed)), mesh=dict(mesh.shape),
              process_count=1, config=ckpt_lib.config_json(config))
  out = {}
  # Orbax warns at each save about the time our own wait() calls spent ("Waiting for
  # previous save to complete took ..."): not a wait inside save(), so keep it quiet.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    mgrs = {mode: ckpt_lib.TrainCheckpoints(os.path.join(root, mode), keep=1,
                                            async_save=(mode == 'async'), log=lambda *a: None)
            for mode in ('async', 'sync')}
    times = {mode: ([], []) for mode in mgrs}
    base = int(state.step)
    for r in range(args.save_repeats):
      for mode, mgr in mgrs.items():
        t0 = time.perf_counter()
        mgr.save(base + r, state, meta)
        t1 = time.perf_counter()
        mgr.wait()
        t2 = time.perf_counter()
        times[mode][0].append(t1 - t0)
        times[mode][1].append(t2 - t0)
        print(f'checkpoint {mode}: save() blocked {t1 - t0:.3f} s, on disk after '
              f'{t2 - t0:.3f} s', flush=True)
    for mode, (block, total) in times.items():
      out[f'save_block_s_{mode}'] = min(block)
      out[f'save_total_s_{mode}'] = min(total)
      out[f'save_block_times_{mode}'] = block
      out[f'save_total_times_{mode}'] = total
    # A training step while an async save writes (the loop's real overlap).
    mgr = mgrs['async']
    t0 = time.perf_counter()
    mgr.save(base + args.save_repeats, state, meta)
    t1 = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    t2 = time.perf_counter()
    mgr.wait()
    out['step_s_during_async_save'] = t2 - t1
    out['save_block_s_async_overlap'] = t1 - t0
    out['save_total_s_async_overlap'] = time.perf_counter() - t0
    print(f'checkpoint async + a training step: save() blocked {t1 - t0:.3f} s, the step '
          f'took {t2 - t1:.3f} s, on disk after {out["save_total_s_async_overlap"]:.3f} s',
          flush=True)
    for mgr in mgrs.values():
      mgr.close()
  finally:
    absl_logging.set_verbosity(verbosity)
    shutil.rmtree(root, ignore_errors=True)
  return out, state


def measure_torch_save(step, args):
  torch = bench_common.require('torch', 'the torch.save measurement')
  root = tempfile.mkdtemp(prefix='denseav_bench_ckpt_torch_', dir=args.ckpt_dir)
  path = os.path.join(root, 'last.ckpt')
  try:
    times = []
    for _ in range(args.save_repeats):
      t0 = time.perf_counter()
      torch.save(step.state_dict(), path)
      times.append(time.perf_counter() - t0)
      print(f'checkpoint torch.save: {times[-1]:.3f} s', flush=True)
    return dict(save_block_s_sync=min(times), save_block_times_sync=times,
                checkpoint_bytes=os.path.getsize(path))
  finally:
    shutil.rmtree(root, ignore_errors=True)
