"""The training loop and its periodic actions (docs/training.md).

Every host runs the same loop on its slice of each global batch. Per step: switch phase
when the recipe says so, read and place the batch (timing the wait for data), run the
jitted update, then - decided identically on every host - log, trace, save, evaluate and
stop. Device results are fetched only when something is reported or saved, so the host
keeps dispatching ahead of the devices; a NaN or Inf in any step since the last fetch
stops the run before it can be saved.

Order at a step: a stop (preemption.py) saves first and evaluates nothing (unless
config.eval_on_stop, once the checkpoint is on disk); otherwise the save starts before the
evaluation (it is written in the background meanwhile), except when keep_best_metric ranks
the checkpoint by that evaluation. An evaluation abandoned by a stop is run again when the
run resumes at that step.
"""

import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from denseav_jax.checkpoint import model_io
from denseav_jax import errors
from denseav_jax import io as io_lib
from denseav_jax.parallel import sharding
from denseav_jax.data import pipeline
from denseav_jax.evals import suite as suite_lib
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.parallel import partitioning
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib
from denseav_jax.checkpoint import workdir_lock
from denseav_jax.trainer import checks
from denseav_jax.trainer import mfu as mfu_lib
from denseav_jax.trainer import optim
from denseav_jax.trainer import preemption
from denseav_jax.trainer import progress as progress_lib
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


class _Phase:
  """The optimizer, state shardings and jitted step of one phase (built on first use)."""

  def __init__(self, config, model, mesh):
    self.config, self.model, self.mesh = config, model, mesh
    self._cache: dict[int, tuple[Any, Any, Any]] = {}

  def tx(self, phase: int):
    return self.get(phase)[0]

  def get(self, phase: int):
    if phase not in self._cache:
      tx = optim.make_optimizer(self.config, phase)
      _, shardings = state_lib.abstract_state(self.config, self.model, tx, self.mesh, phase)
      step = step_lib.make_train_step(self.config, self.model, tx, self.mesh, shardings, phase)
      self._cache[phase] = (tx, shardings, step)
    return self._cache[phase]


def _warn_replicated(config, model, mesh) -> None:
  """FSDP leaving large arrays whole on every device is usually a rule that did not apply."""
  limit = int(config.fsdp_warn_bytes)
  if not limit:
    return
  shapes = params_lib.param_shapes(config, model)
  shard = params_lib.param_shardings(config, model, mesh)
  big = partitioning.replicated_under_fsdp(shapes, shard, mesh, limit)
  if big:
    names = ', '.join(f'{p} ({_size(b)})' for p, b in big[:8])
    _say(f'warning: fsdp={mesh.shape["fsdp"]} leaves {len(big)} parameter arrays of '
         f'{_size(limit)} or more replicated (no dimension divisible by the fsdp axis, or '
         f'no rule for it in config.partitioning): {names}'
         + (' ...' if len(big) > 8 else ''))


def _size(nbytes: int) -> str:
  return f'{nbytes / 2**20:.1f} MiB' if nbytes >= 2**20 else f'{nbytes / 2**10:.1f} KiB'


def _meta(config, mesh, phase: int, stream) -> dict[str, Any]:
  return dict(phase=phase, data=stream.state(stream.global_counts()),
              rng=dict(seed=int(config.seed), step_key='fold_in(key(seed + 1), step)'),
              mesh=dict(mesh.shape), process_count=jax.process_count(),
              config=ckpt_lib.config_json(config))


class _Profile:
  """jax.profiler trace of steps [start, start + count) into WORKDIR/profile."""

  def __init__(self, config, workdir):
    spec = tuple(config.profile_steps or ())
    if spec and (len(spec) != 2 or spec[1] < 1):
      raise errors.ConfigError(f'config.profile_steps={spec}: use (first step, count)')
    self.start, self.stop = (spec[0], spec[0] + spec[1]) if spec else (-1, -1)
    self.dir = os.path.join(workdir, 'profile')
    self.active = False

  def before(self, step: int) -> None:  # `step` is the step about to run (0-based).
    if step == self.start and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, state) -> None:  # `step` steps have run.
    if self.active and step >= self.stop:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      _say(f'Wrote a profiler trace of steps {self.start}-{self.stop - 1} to {self.dir}')


def _headline(key: str) -> bool:
  """Metrics the console shows after an evaluation (all are in metrics.json)."""
  m = key.rsplit('/', 1)[-1]
  return not (m.startswith(('chance', 'ap_h', 'act_h')) or m == 'num_examples')


class _Evals:
  """The loop's evaluations: what is due, run with a way out, and the latest metrics."""

  def __init__(self, suite, workdir: str, writer):
    self.suite, self.workdir, self.writer = suite, workdir, writer
    self.last: dict[str, float] = {}

  def run(self, params, step: int, names, stop=None) -> bool:
    """Evaluates `names` at `step`. stop() is asked between batches (StopAgreement.
    abandon_eval); False when it gave the evaluation up (nothing written)."""
    names = list(names or self.suite.names)
    _say(f'eval step {step}: running {", ".join(names)}')
    try:
      got = self.suite.run(params, step, self.workdir, self.writer, names=names, stop=stop)
    except suite_lib.Abandoned as e:
      _say(f'eval step {step}: abandoned ({e}) to stop the run')
      return False
    self.last = {**self.last, **got}
    _say(f'eval step {step}: ' + ' '.join(
        f'{k}={v:.3f}' for k, v in self.last.items()
        if k.split('/')[0] in names and _headline(k)))
    return True

  def missing(self, step: int, names) -> list[str]:
    """Those of `names` without metrics at `step` on disk, as process 0 reads them."""
    missing = self.suite.missing(self.workdir, step, names)
    if jax.process_count() > 1:
      mask = np.array([n in missing for n in self.suite.names])
      mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
      missing = [n for n, m in zip(self.suite.names, mask) if m]
    return missing


_WHY = {'sigterm': 'a termination signal', 'preemption': 'a preemption notice'}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training in `workdir`; returns the last evaluation's metrics.

  A stop (SIGTERM, preemption, max_seconds) saves the step first; the run then evaluates
  only with config.eval_on_stop, after the checkpoint is on disk. An evaluation in progress
  when a stop is asked is abandoned between batches; when the run resumes, evaluations due
  at its step that did not finish run first.

  Raises errors.DenseAVError subclasses for what the user can fix (bad config values,
  incompatible checkpoints, a non-finite loss) and errors.DataError for the data.
  """
  workdir = io_lib.absolute(workdir)
  # One trainer per workdir, taken before anything is written or the checkpoint manager
  # (which deletes temporary checkpoint folders) exists (checkpoint/workdir_lock.py).
  with workdir_lock.hold(workdir, log=_say):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                        ) -> dict[str, float]:
  """train_and_evaluate with the workdir's trainer lock held."""
  mesh = checks.check_training(config)  # Every config value, before anything compiles.
  model = denseav.build_model(config)
  is_main = jax.process_index() == 0
  if is_main:  # Lets predict / evaluate rebuild the model from the workdir.
    model_io.save_config(workdir, config)
  _say(f'Mesh: {sharding.describe(mesh)} over {jax.process_count()} process(es); global '
       f'batch {config.batch_size}')
  _warn_replicated(config, model, mesh)
  phases = _Phase(config, model, mesh)
  ckpts = ckpt_lib.TrainCheckpoints(
      workdir, keep=config.keep_checkpoints, async_save=config.async_checkpointing,
      best_metric=config.keep_best_metric, best_mode=config.keep_best_mode,
      keep_best=config.keep_best, log=_say)
  restored = ckpts.restore_latest(config, lambda meta: state_lib.abstract_state(
      config, model, phases.tx(int(meta['phase'])), mesh, int(meta['phase']))[0])
  if restored is not None:
    state, meta = restored
    phase = int(meta['phase'])  # The loop moves on to phase 2 when it is due.
    stream = pipeline.train_iterator(config, state=meta['data'])
    _say(f'Resumed from {ckpts.directory}/{int(state.step)} (phase {phase}, data from '
         f'example {stream.position})')
  else:
    phase = optim.phase_at(config, 0)
    state, _ = state_lib.create_state(config, model, phases.tx(phase), mesh, phase)
    stream = pipeline.train_iterator(config)
    _say('Parameters: ' + ', '.join(
        f'{k} {v:,}' for k, v in params_lib.count_params(state.params).items() if v > 1))
  progress = progress_lib.Progress(workdir, config, int(state.step), is_main,
                                   peak_flops=mfu_lib.peak_flops(config))
  step_flops: dict[int, float | None] = {}
  suite = suite_lib.Suite(config, model, mesh, phases.get(phase)[1].params)
  evals = _Evals(suite, workdir, progress.writer)
  profile = _Profile(config, workdir)
  step = int(state.step)
  last_saved = ckpts.steps()[-1] if ckpts.steps() else None
  pending: list[tuple[int, Any]] = []
  reasons: list[str] = []

  def save(step, metrics=None):
    nonlocal last_saved
    ckpts.save(step, state, _meta(config, mesh, phase, stream), metrics=metrics)
    last_saved = step

  with preemption.StopRequest() as request:
    stop = preemption.StopAgreement(request, ckpts, config.max_seconds,
                                    config.stop_check_every_steps)
    try:
      if restored is not None:  # What a stop abandoned at this step (its save is on disk).
        due = evals.missing(step, suite.due(step, step >= config.num_train_steps))
        if due and not evals.run(state.params, step, due, stop.abandon_eval):
          reasons = stop.pending
      while step < config.num_train_steps and not reasons:
        if phase == 1 and optim.phase_at(config, step) == 2:
          state, _ = state_lib.with_optimizer(state, config, model, phases.tx(2), mesh, 2)
          phase = 2
          _say(f'Phase 2 from step {step}: fine-tuning the towers (see config.model.*.'
               'finetune and lora) at config.lr')
        _, _, train_step = phases.get(phase)
        profile.before(step)
        t0 = time.time()
        host_batch = next(stream)
        progress.data_wait += time.time() - t0
        batch = sharding.put_batch(host_batch, mesh)
        if progress.peak_flops and phase not in step_flops:  # MFU: once per phase.
          step_flops[phase] = mfu_lib.step_flops(config, phase, train_step, state, batch)
        progress.flops_per_step = step_flops.get(phase)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        profile.after(step, state)
        eval_due = suite.due(step, step >= config.num_train_steps)
        ranked = bool(eval_due and config.keep_best_metric)  # Saved after, with the metric.
        save_due = (step >= config.num_train_steps or step % config.checkpoint_every_steps == 0
                    or ranked)
        log_due = step % config.log_every_steps == 0  # All-gathers the data counts.
        reasons = stop.reasons(step, sync=bool(log_due or save_due or eval_due))
        if reasons:  # Save this step before anything else; evaluate nothing here.
          eval_due, ranked, save_due = [], False, True
        if log_due or save_due or eval_due:
          fetched = jax.device_get([m for _, m in pending])
          for (s, _), m in zip(pending, fetched):
            m = {k: float(v) for k, v in m.items()}
            bad = progress_lib.non_finite(m)
            if bad:
              raise errors.NonFiniteLoss(
                  f'non-finite values at step {s}: {", ".join(bad)}; stopped without saving '
                  f'(the last checkpoint, {"step " + str(last_saved) if last_saved else "none"},'
                  ' is kept). Try a lower config.lr or config.pretrain_lr, or check the data')
          pending = []
          extra = {'phase': float(phase), 'lr': optim.learning_rate(config, step - 1)}
          counts = stream.global_counts()  # Every host decides the bad-fraction stop alike.
          progress.report(step, m, extra, stream.stats(counts))
          stream.check(counts)
        if ranked and not evals.run(state.params, step, eval_due, stop.abandon_eval):
          reasons = stop.pending
        if save_due:  # Written in the background while the evaluation below runs.
          save(step, metrics=evals.last if ranked and not reasons else None)
        if eval_due and not ranked and not evals.run(state.params, step, eval_due,
                                                     stop.abandon_eval):
          reasons = stop.pending
        if reasons and last_saved != step:
          save(step)
      if reasons:
        ckpts.wait()
        latency = stop.latency()
        since = ('the signal' if 'sigterm' in reasons else 'the time budget ran out'
                 if 'max_seconds' in reasons else 'the preemption sync point')
        why = dict(_WHY, max_seconds=f'config.max_seconds={config.max_seconds}')
        _say(f'Stopping at step {step} after {" and ".join(why[r] for r in reasons)}: '
             f'saved {ckpts.directory}/{step} (on disk {latency:.2f} s after {since}); '
             'run the same command to resume')
        progress.writer.scalars(step, {'train/stop_latency_s': latency})
        if config.eval_on_stop:  # The checkpoint is on disk by now.
          evals.run(state.params, step, None)
    finally:
      ckpts.close()
      progress.close()
      stream.close()
  _say(stream.summary(stream.global_counts()))
  return evals.last
