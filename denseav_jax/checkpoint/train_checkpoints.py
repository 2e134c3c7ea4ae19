"""Training checkpoints: asynchronous Orbax saves of the train state and its metadata,
keep-N plus keep-best retention, and resume that survives crashes and damaged files.

Layout (docs/training.md#checkpoints): WORKDIR/checkpoints/STEP/

  state/  the TrainState (step, parameters, the current phase's optimizer state), every
          array written by the processes that hold its shards;
  meta/   one JSON object (written once, by process 0): the step, the phase, the data
          position (the next *global* stream position, in examples, so any batch size resumes
          it, and the skip counts summed over processes), the RNG (seed; each step's key is the
          seed folded with the step), the mesh and process count it was written on, and the
          whole config.

Because the data position is global and the arrays restore into whatever shardings the
current mesh asks for, a checkpoint resumes on another mesh shape and another number of
hosts and continues the same global stream.

Orbax writes each step into a temporary folder and renames it when every file is complete,
so a crash during a save (even a SIGKILL) never leaves a checkpoint that resume would pick.
A restore that fails is one of two things (restore_failures.py lists what each looks like):

- damage (the checkpoint's own files are truncated, missing, corrupted or not JSON): the
  checkpoint is reported in one line, moved to WORKDIR/checkpoints_damaged/ (never
  deleted), and resume falls back to the one before it. When every checkpoint turns out
  damaged the run refuses to start again from step 0 (a CheckpointError naming
  checkpoints_damaged/), and keeps refusing while checkpoints/ is empty and
  checkpoints_damaged/ is not: starting from scratch is for the user to choose;
- trouble (anything else: out of memory, an I/O error or timeout of the filesystem, a
  state that does not fit the current mesh): a CheckpointError of one line naming the
  checkpoint, the error and what to do; nothing is moved.

Every process classifies its own failure and the verdicts are all-gathered, so all take
the same branch; the item handlers hand a failure back instead of raising it, so that a
process whose read failed still meets the others at the barrier that ends every Orbax
restore. A checkpoint written with a different model is a CheckpointError naming
the differences.
"""

import datetime
import json
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from denseav_jax import io as io_lib
from denseav_jax.checkpoint import model_io
from denseav_jax.checkpoint import restore_failures as failures
from denseav_jax import errors

ITEMS = ('state', 'meta')
FORMAT = 1  # Version of the meta layout.
# Config sections that must match to resume (they shape the parameters or their meaning);
# these keys inside them may change between runs.
_MUST_MATCH = ('input', 'model')
_MAY_CHANGE = ('remat', 'aligner_remat', 'tower_microbatches', 'dtype', 'dropout',
               'attention_dropout', 'activation_dropout',
               'feat_proj_dropout', 'layerdrop')


def config_json(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: saved -> current' for the config keys that must match to resume."""
  diffs = []
  for section in _MUST_MATCH:
    a = io_lib.flatten(saved.get(section, {}), '.', section + '.')
    b = io_lib.flatten(current.get(section, {}), '.', section + '.')
    for key in sorted(set(a) | set(b)):
      if key.rsplit('.', 1)[-1] in _MAY_CHANGE:
        continue
      va, vb = a.get(key, '(absent)'), b.get(key, '(absent)')
      if isinstance(va, list):
        va = tuple(va)
      if isinstance(vb, list):
        vb = tuple(vb)
      if va != vb:
        diffs.append(f'{key}: {va!r} -> {vb!r}')
  return diffs


_VERDICTS = (None, failures.DAMAGE, failures.TROUBLE)  # Worst last: all-gathered as a max.
_META_KEYS = ('phase', 'data', 'config')  # What resume reads from every meta.


class _Failed:
  """What an item handler returns instead of raising: Orbax ends every restore with a
  barrier over all processes (a device collective), and a process that raised before it
  would meet the others' barrier with its own verdict all-gather instead."""

  def __init__(self, error: BaseException):
    self.error = error


def _no_check(directory) -> None:
  del directory  # Unused.


def _state_metadata_check(directory) -> None:
  path = os.path.join(str(directory), '_METADATA')
  if not io_lib.exists(path):  # Orbax would report a tree mismatch, as a changed model.
    raise failures.MissingFile(f'{path} is missing')


def _returning_failures(handler, check=_no_check):
  """`handler` (an Orbax item handler), its restore returning _Failed instead of raising.
  The instance keeps its class, under which Orbax registers its arguments."""
  restore = handler.restore

  def guarded(directory, *args, **kwargs):
    try:
      check(directory)
      return restore(directory, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      return _Failed(e)

  handler.restore = guarded
  return handler


def _raise_failed(value):
  if isinstance(value, _Failed):
    raise value.error
  return value


def _attempt(fn) -> tuple[Any, BaseException | None, str | None]:
  """(fn(), None, None), or (None, the exception, its verdict: damage or trouble)."""
  try:
    return fn(), None, None
  except Exception as e:  # pylint: disable=broad-except
    return None, e, failures.classify(e)


def _agree(verdict: str | None) -> str | None:
  """The worst verdict over every process (trouble > damage > none), so that every
  process takes the same branch."""
  if jax.process_count() == 1:
    return verdict
  codes = multihost_utils.process_allgather(np.asarray(_VERDICTS.index(verdict), np.int32))
  return _VERDICTS[int(np.max(codes))]


class TrainCheckpoints:
  """The checkpoints of one training workdir (see the module doc)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               best_metric: str = '', best_mode: str = 'max', keep_best: int = 1,
               log=print):
    self.workdir = io_lib.absolute(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.damaged_directory = os.path.join(self.workdir, 'checkpoints_damaged')
    if best_mode not in ('max', 'min'):
      raise errors.ConfigError(f"config.keep_best_mode={best_mode!r}: use 'max' or 'min'")
    self.best_metric, self._log = best_metric, log
    model_io._cpu_arrays_saved_by_one_replica()  # pylint: disable=protected-access
    policies = [ocm.LatestN(n=max(int(keep), 1))]
    best_fn = None
    if best_metric:
      best_fn = lambda m: float(m[best_metric])
      policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == 'min',
                                n=max(int(keep_best), 1),
                                keep_checkpoints_without_metrics=False))
    self._options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=ocm.AnyPreservationPolicy(policies))
    self._mgr = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    # Handlers named up front, so a fresh manager can read what an earlier run wrote (its
    # metadata included) without a save first.
    return ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={
            'state': _returning_failures(ocp.StandardCheckpointHandler(),
                                         _state_metadata_check),
            'meta': _returning_failures(ocp.JsonCheckpointHandler())})

  # ------------------------------------------------------------------- save

  def save(self, step: int, state, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> bool:
    """Starts saving `step` (returns once the arrays are copied off the devices; the files
    are written in the background when async). `metrics` rank it for keep-best."""
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      raise errors.ConfigError(
          f'config.keep_best_metric={self.best_metric!r} is not among the evaluation '
          f'metrics ({", ".join(sorted(metrics)) or "none"})')
    if self.best_metric and metrics is not None:
      metrics = {self.best_metric: float(metrics[self.best_metric])}
    else:
      metrics = None
    meta = dict(meta, format=FORMAT, step=int(step))
    return self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._mgr.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Orbax's preemption sync point (multi-host jobs under jax.distributed)."""
    return jax.process_count() > 1 and self._mgr.reached_preemption(step)

  def steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()

  # ---------------------------------------------------------------- restore

  def read_meta(self, step: int) -> dict[str, Any]:
    return dict(_raise_failed(self._mgr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']))

  def _read_resume_meta(self, step: int) -> dict[str, Any]:
    meta = self.read_meta(step)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:  # Valid JSON, but not what save() wrote.
      raise failures.BadMeta(f'meta of step {step} lacks {", ".join(missing)}')
    return meta

  def _restore_state(self, step: int, abstract):
    return _raise_failed(self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state'])

  def restore_latest(self, config, abstract_for: Callable[[dict], Any]
                     ) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest checkpoint that restores, or None when there is none.

    abstract_for(meta) gives the abstract state (shapes and shardings) to restore into.
    Damaged checkpoints are set aside on the way; trouble, an incompatible checkpoint, or
    every checkpoint damaged raises errors.CheckpointError (module doc)."""
    current = config_json(config)
    while True:
      self._mgr.reload()
      steps = self.steps()
      if not steps:
        self._refuse_if_all_damaged()
        return None
      step = steps[-1]
      where = os.path.join(self.directory, str(step))
      meta, error, verdict = _attempt(lambda: self._read_resume_meta(step))
      if self._set_aside_or_raise(step, error, _agree(verdict)):
        continue
      diffs = config_differences(meta['config'], current)
      if diffs and config.resume_strict:
        raise errors.CheckpointError(
            f'checkpoint {where} was written with a different model config: '
            f'{"; ".join(diffs[:8])}{" ..." if len(diffs) > 8 else ""}. Resume with the '
            f'config it was trained with ({self.workdir}/{model_io.CONFIG_FILE}), train '
            'into a new --workdir, or set --config.resume_strict=False')
      abstract = abstract_for(meta)
      self._check_tree(step, abstract)
      state, error, verdict = _attempt(lambda: self._restore_state(step, abstract))
      if self._set_aside_or_raise(step, error, _agree(verdict)):
        continue
      return state, meta

  def _set_aside_or_raise(self, step: int, error: BaseException | None,
                          verdict: str | None) -> bool:
    """False when every process read `step`; True after setting it aside as damaged;
    raises errors.CheckpointError (one line, nothing moved) on trouble anywhere."""
    if verdict is None:
      return False
    if verdict == failures.DAMAGE:
      self._set_aside(step, error)
      return True
    where = os.path.join(self.directory, str(step))
    if error is None:
      why, what = 'another process could not restore it (see that process\'s log)', ''
    elif failures.classify(error) == failures.TROUBLE:
      why, what = failures.reason(error), failures.hint(error)
    else:
      why, what = failures.reason(error), 'Another process hit trouble (see its log).'
    raise errors.CheckpointError(
        f'checkpoint {where} could not be restored: {why}. {what + " " if what else ""}'
        'Nothing was moved: run the same command again once this is fixed (if the '
        f'checkpoint itself is damaged, move it into {self.damaged_directory}/ to resume '
        'from the one before it)')

  def _refuse_if_all_damaged(self) -> None:
    """A CheckpointError when checkpoints were set aside as damaged and none is left:
    starting again from step 0 is for the user to choose."""
    damaged = self.damaged_directory
    if io_lib.listdir(damaged):
      raise errors.CheckpointError(
          f'no checkpoint left in {self.directory}: every one was damaged and is in '
          f'{damaged}/, so this run does not start again from step 0 on its own. To '
          f'start from scratch, train into a new --workdir or move {damaged} out of the '
          'workdir; to retry a set-aside checkpoint, move it back as '
          f'{self.directory}/STEP')

  def _check_tree(self, step: int, abstract) -> None:
    """A CheckpointError when the saved parameters do not fit the model (shapes, keys)."""
    where = os.path.join(self.directory, str(step))
    try:
      tree = self._mgr.item_metadata(step)['state']
      tree = getattr(tree, 'tree', tree)
      saved = tree['params']
    except Exception:  # pylint: disable=broad-except
      return  # Unreadable metadata: the restore below reports the checkpoint as damaged.
    try:
      model_io.compare_trees(saved, abstract.params, f'the parameters in {where}')
    except ValueError as e:
      raise errors.CheckpointError(
          f'{e}\nResume with the config this run was trained with, or train into a new '
          '--workdir') from None

  def _set_aside(self, step: int, error: BaseException | None) -> None:
    src = os.path.join(self.directory, str(step))
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    dst = os.path.join(self.damaged_directory, f'{step}-{stamp}')
    if jax.process_index() == 0:
      io_lib.makedirs(self.damaged_directory)
      if io_lib.exists(src):
        io_lib.move(src, dst)
      reason = failures.reason(error) if error is not None else (
          'unreadable on another process')
      self._log(f'warning: checkpoint {src} cannot be restored ({reason}); moved it to '
                f'{dst} and trying the one before it')
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'denseav_set_aside_{step}')
    sys.stdout.flush()
