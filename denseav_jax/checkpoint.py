"""Orbax checkpoints of the train state together with the Grain iterator state.

Layout: WORKDIR/checkpoints/STEP/{state, data}. `data` holds one small JSON file per
process (the iterator position), so a preempted multi-host job resumes exactly. Orbax
writes each step to a temporary folder and renames it when complete, so an interrupted
save never replaces a good checkpoint.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int = 3, save_every: int = 1) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=('state', 'data'))


def save(mgr: ocp.CheckpointManager, step: int, state, data_iter=None, force=False) -> bool:
  items = dict(state=ocp.args.StandardSave(state))
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
  saved = mgr.save(step, args=ocp.args.Composite(**items), force=force)
  mgr.wait_until_finished()
  return saved


def restore(mgr: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
  """Restores `step` (default: latest) into `abstract_state`'s shapes and shardings.

  `data_iter` (if given) is moved to the saved position in place. Returns the state.
  """
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mgr.directory}')
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mgr.restore(step, args=ocp.args.Composite(**items))
  return restored['state']


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying `shardings`, for restoring straight onto the mesh."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
