"""The trainer on 8 fake devices: meshes, the two-phase recipe, checkpoints and resume
(in this process; tests/test_resume.py kills and restarts real runs)."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import load_config
from denseav_jax.checkpoint import model_io
from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax.data import pipeline
from denseav_jax.data import sources
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib
from denseav_jax.trainer import loop
from denseav_jax.trainer import optim
from denseav_jax.trainer import progress
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

PRETRAIN = 3
STEPS = 6
# Parameters that get an identically zero gradient in the recipe config below, so Adam never
# moves them although they are trainable: the image CLS projection (misa without use_cls
# scores no CLS) and HuBERT's masked_spec_embed (time masking is off).
NO_GRADIENT = ('image_aligner/cls_layer/', 'audio_model/masked_spec_embed')


def _recipe_config():
  """runlocal with both phases, an attention ViT frozen but for LoRA, a constant rate (so a
  run's trajectory does not depend on num_train_steps) and a checkpoint every step."""
  c = load_config()
  c.model.image.update(mixer='attention', finetune=False)
  c.model.image.lora.update(rank=2, targets=('qkv',))
  c.update(pretrain_steps=PRETRAIN, pretrain_lr=2e-3, lr=1e-3, warmup_steps=1,
           lr_schedule='constant', num_train_steps=STEPS, log_every_steps=1,
           checkpoint_every_steps=1, keep_checkpoints=100, eval_at_end=False,
           async_checkpointing=True)
  return c


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _params_at(workdir, config, step):
  model = denseav.build_model(config)
  abstract = params_lib.abstract_params(config, model)
  return _flat(model_io.load_train_params(f'{workdir}/checkpoints/{step}/state', abstract))


def _losses(workdir):
  return {s: r['loss'] for s, r in progress.read_metrics(workdir).items()}


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted run of the recipe config (steps 1..6, a checkpoint at each)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  c = _recipe_config()
  c.profile_steps = (1, 2)  # A profiler trace of steps 1-2 (it changes no numbers).
  # MFU against a stated peak (a CPU has none in the table, so it is off by default).
  c.peak_flops_per_device = 1e12
  loop.train_and_evaluate(c, workdir)
  return dict(workdir=workdir, config=c, losses=_losses(workdir))


def _copy_run(straight, dst, upto):
  """A copy of the straight run holding its checkpoints up to `upto` (as if stopped there)."""
  shutil.copytree(straight['workdir'], dst)
  for d in glob.glob(f'{dst}/checkpoints/*'):
    if os.path.basename(d).isdigit() and int(os.path.basename(d)) > upto:
      shutil.rmtree(d)
  os.remove(f'{dst}/{progress.METRICS_FILE}')
  return str(dst)


# ----------------------------------------------------------------------------- meshes


def test_mesh_errors_name_the_key():
  with pytest.raises(ValueError, match='unknown mesh axis'):
    sharding.make_mesh((('data', 4), ('model_parallel', 2)))
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh((('data', 8), ('tensor', 2)))
  with pytest.raises(ValueError, match='mesh_dcn'):
    sharding.make_mesh((('data', -1),), dcn_spec=(('data', 3),))
  # A hybrid (across-slice) mesh needs as many slices / processes as it spans; the
  # two-process test in test_resume.py builds one.
  with pytest.raises(ValueError, match='devices come from 1 processes'):
    sharding.make_mesh((('fsdp', 4),), dcn_spec=(('data', 2),))
  mesh = sharding.make_mesh((('fsdp', 4), ('data', 2)))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}


def test_fsdp_warning_names_replicated_arrays(capsys):
  c = load_config()
  c.update(mesh=(('fsdp', 8),), fsdp_warn_bytes=512)
  loop._warn_replicated(c, denseav.build_model(c), sharding.mesh_from_config(c))  # pylint: disable=protected-access
  out = capsys.readouterr().out
  # The MLP bias [128] has only an 'mlp' axis, which goes to 'tensor': whole on every device.
  assert 'warning: fsdp=8 leaves 1 parameter' in out, out
  assert 'image_model/blocks_0/mlp/fc1/bias' in out, out


# --------------------------------------------------------------------------- recipe


def test_phases_train_only_their_parameters(straight):
  c, workdir = straight['config'], straight['workdir']
  model = denseav.build_model(c)
  init = _flat(params_lib.init_params(c, model, jax.random.key(c.seed)))
  at = {s: _params_at(workdir, c, s) for s in (PRETRAIN, STEPS)}
  for phase, before, after in ((1, init, at[PRETRAIN]), (2, at[PRETRAIN], at[STEPS])):
    trainable = _flat(optim.trainable_mask(params_lib.param_shapes(c, model), c, phase))
    for name, x in before.items():
      changed = not np.array_equal(x, after[name])
      no_grad = any(name.startswith(p) for p in NO_GRADIENT)
      expected = bool(trainable[name]) and not no_grad
      assert changed == expected, (phase, name, changed, bool(trainable[name]))
  # Phase 1 trains the heads only; phase 2 adds the image LoRA and the whole audio tower.
  shapes = params_lib.param_shapes(c, model)
  trainable1 = _flat(optim.trainable_mask(shapes, c, 1))
  assert not any(v for k, v in trainable1.items() if k.startswith(('image_model', 'audio_model')))
  trainable2 = _flat(optim.trainable_mask(shapes, c, 2))
  assert trainable2['image_model/blocks_0/attn/qkv/lora_a']
  assert not trainable2['image_model/blocks_0/attn/qkv/kernel']
  assert trainable2['audio_model/layers_0/attention/q_proj/kernel']
  # The phase and the rate of each step, as logged; the phase in each checkpoint.
  logged = progress.read_metrics(workdir)
  assert [logged[s]['phase'] for s in range(1, STEPS + 1)] == [1, 1, 1, 2, 2, 2]
  assert logged[1]['lr'] == 0 and logged[2]['lr'] == pytest.approx(c.pretrain_lr)
  assert logged[4]['lr'] == 0 and logged[5]['lr'] == pytest.approx(c.lr)
  ckpts = ckpt_lib.TrainCheckpoints(workdir)
  assert [ckpts.read_meta(s)['phase'] for s in (2, 3, 4)] == [1, 1, 2]
  ckpts.close()


def test_profiler_trace_of_the_configured_steps(straight):
  traces = glob.glob(f'{straight["workdir"]}/profile/**/*.xplane.pb', recursive=True)
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces


def test_mfu_in_the_metrics_of_each_logged_step(straight):
  """MFU = XLA's FLOPs of the step per device / (step time x peak) (this architecture is
  not one the hand count covers), in train_metrics.jsonl and TensorBoard, per phase."""
  records = progress.read_metrics(straight['workdir'])
  assert sorted(records) == list(range(1, STEPS + 1))
  for step, rec in records.items():
    assert 0 < rec['mfu'] < 1, (step, rec)
    flops = rec['mfu'] * rec['step_time_s'] * 1e12
    assert 1e5 < flops < 1e12, (step, flops)  # Per device, this toy model.


def test_schedules():
  c = load_config()
  c.update(lr=1.0, warmup_steps=10, lr_schedule='sgdr', lr_cycle_length=100,
           pretrain_steps=0)
  lr = lambda s: optim.learning_rate(c, s)
  assert lr(0) == 0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)
  assert lr(60) == pytest.approx(0.02 + 0.98 * 0.5, abs=1e-6)  # Half way down cycle 1.
  assert lr(110) == pytest.approx(1.0)  # Restart; cycle 2 is twice as long (200 steps).
  assert lr(210) == pytest.approx(0.51, abs=1e-6)
  assert lr(309) < 0.03 and lr(310) == pytest.approx(1.0)  # Third cycle starts at 310.
  c.update(lr_schedule='cosine', num_train_steps=110, pretrain_steps=0)
  assert lr(110) == pytest.approx(0.0, abs=1e-6)
  c.lr_schedule = 'linear'
  with pytest.raises(errors.ConfigError, match='lr_schedule'):
    optim.schedule(c, 2)


# ------------------------------------------------------------------------ checkpoints


# Orbax's failed async read leaves an asyncio callback on a closed loop behind (harmless).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_resume_onto_another_mesh_continues_the_global_stream(straight, tmp_path, capsys):
  """Checkpoint 5 damaged (its arrays truncated): the loop sets it aside with one warning
  and resumes from 4 on another mesh, continuing the same global batches. (Every kind of
  damage and trouble: tests/checkpoint/test_restore_failures.py; bitwise resume on one
  mesh: tests/trainer/test_resume.py.)"""
  c = _recipe_config()
  workdir = _copy_run(straight, tmp_path / 'run', upto=5)
  files = [f for f in glob.glob(f'{workdir}/checkpoints/5/state/**', recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 64 and '/d/' in f]
  assert files
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  c.mesh = (('data', 2), ('fsdp', 2), ('tensor', 2))
  loop.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  warnings = [l for l in out.splitlines() if l.startswith('warning: checkpoint')]
  assert len(warnings) == 1 and f'{workdir}/checkpoints/5 cannot be restored' in warnings[0]
  assert f'Resumed from {workdir}/checkpoints/4 ' in out and len(glob.glob(f'{workdir}/checkpoints_damaged/5-*')) == 1
  got = _losses(workdir)
  assert sorted(got) == [5, 6]
  for s in (5, 6):
    assert got[s] == pytest.approx(straight['losses'][s], abs=1e-5)
  # The stream position travels as a global example index.
  ckpts = ckpt_lib.TrainCheckpoints(workdir)
  assert ckpts.read_meta(6)['data']['position'] == 6 * c.batch_size
  assert ckpts.read_meta(6)['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}
  ckpts.close()


def test_incompatible_checkpoint_names_the_difference(straight, tmp_path):
  c = _recipe_config()
  workdir = _copy_run(straight, tmp_path / 'run', upto=2)
  c.model.code_dim = 32
  with pytest.raises(errors.CheckpointError, match=r'model\.code_dim: 16 -> 32'):
    loop.train_and_evaluate(c, workdir)
  c.resume_strict = False  # The parameter shapes still differ: named, not a traceback.
  with pytest.raises(errors.CheckpointError, match='mis-shaped'):
    loop.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(f'{workdir}/checkpoints')) == ['1', '2']  # Nothing set aside.


def test_keep_latest_and_best(tmp_path):
  """Retention: the newest keep_checkpoints plus the best keep_best by a metric."""
  state = {'w': np.arange(4.0)}
  ckpts = ckpt_lib.TrainCheckpoints(str(tmp_path), keep=2, best_metric='ap', keep_best=1,
                                    async_save=True)
  scores = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4}
  for s, ap in scores.items():
    ckpts.save(s, state, {'phase': 2}, metrics={'ap': ap, 'other': 0.0})
  ckpts.wait()
  assert ckpts.steps() == [2, 4, 5]
  with pytest.raises(errors.ConfigError, match='keep_best_metric'):
    ckpts.save(6, state, {'phase': 2}, metrics={'other': 1.0})
  ckpts.close()


def test_non_finite_loss_stops_with_the_step_and_terms(tmp_path):
  c = load_config()  # The tiny default model: any model blows up at this rate.
  c.update(pretrain_steps=0, lr=1e30, warmup_steps=1, lr_schedule='constant',
           checkpoint_every_steps=1, log_every_steps=10, num_train_steps=20,
           eval_at_end=False)
  with pytest.raises(errors.NonFiniteLoss) as e:
    loop.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  assert 'non-finite values at step ' in msg and 'loss' in msg, msg
  bad_step = int(msg.split('at step ')[1].split(':')[0])
  steps = model_io.checkpoint_steps(str(tmp_path))
  assert steps and max(steps) == bad_step - 1, (steps, msg)  # The last good one is kept.


def test_data_position_after_resume_is_the_stream_position(straight):
  c = straight['config']
  ckpts = ckpt_lib.TrainCheckpoints(straight['workdir'])
  meta = ckpts.read_meta(3)
  ckpts.close()
  assert meta['data']['position'] == 3 * c.batch_size and meta['process_count'] == 1
  assert json.loads(json.dumps(meta['config']))['model']['code_dim'] == 16
  it = pipeline.train_iterator(c, state=meta['data'])
  batch = next(it)
  it.close()
  src = sources.make(c, 'train')
  np.testing.assert_array_equal(batch['audio'][0], src.record(3 * c.batch_size)['audio'])


# ---------------------------------------------------------------------- learning, init


def test_loss_decreases_on_eight_devices(tiny_config):
  c = tiny_config
  c.lr = 3e-3
  c.warmup_steps = 1
  # Constant rate: the runlocal config's cosine schedule reaches 0 after its 6 steps, which
  # would leave 18 of the 24 steps without updates (measured drop 0.25 vs 1.4-1.9 constant).
  c.lr_schedule = 'constant'
  mesh = sharding.mesh_from_config(c)
  model = denseav.build_model(c)
  tx = optim.make_optimizer(c)
  state, shardings = state_lib.create_state(c, model, tx, mesh)
  train_step = step_lib.make_train_step(c, model, tx, mesh, shardings)
  it = pipeline.train_iterator(c)
  batches = [sharding.put_batch(next(it), mesh) for _ in range(2)]
  it.close()
  assert batches[0]['image'].sharding.spec[0] == ('data', 'fsdp')
  assert len(batches[0]['image'].addressable_shards) == 8
  losses = []
  for i in range(24):  # Two fixed batches in turn: the model must fit them.
    state, metrics = train_step(state, batches[i % 2])
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.8, losses
  assert int(state.step) == 24
  for k in ('grad_norm', 'grad_norm/image_tower', 'grad_norm/audio_tower', 'grad_norm/heads'):
    assert float(metrics[k]) > 0, k


def test_init_from_converted_params(tmp_path, tiny_config):
  """config.init_from: training starts from saved parameters (configs/converted.py:DIR);
  a model that does not fit the config is a clear error listing the keys."""
  from denseav_jax import evaluate  # pylint: disable=g-import-not-at-top
  c = tiny_config
  mesh = sharding.mesh_from_config(c)
  model = denseav.build_model(c)
  params = params_lib.init_params(c, model, jax.random.key(7))
  params = jax.tree.map(lambda x: x + 0.5, params)
  model_io.save_params(str(tmp_path / 'model'), params, c)
  c2 = load_config('converted.py', str(tmp_path / 'model'))
  assert c2.init_from == str(tmp_path / 'model')
  for key in ('code_dim', 'num_heads', 'audio_aligner', 'image_aligner'):
    assert c2.model[key] == c.model[key]
  assert c2.model.image.width == c.model.image.width
  assert c2.model.audio.depth == c.model.audio.depth
  tx = optim.make_optimizer(c2)
  state, _ = state_lib.create_state(c2, denseav.build_model(c2), tx, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
  assert int(state.step) == 0
  # Adam starts fresh: zero moments shaped like the parameters.
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(state.opt_state)
             if np.ndim(x) > 0)
  # evaluate runs on the converted model into a new workdir (no training checkpoint).
  c2.eval_num_figures = 0  # Numbers only (figures: test_cli.py).
  step, metrics = evaluate.evaluate_workdir(c2, str(tmp_path / 'ev'))
  assert step == 0 and 'retrieval/a2i_r1' in metrics
  assert os.path.exists(tmp_path / 'ev' / 'eval' / '0' / 'metrics.json')
  c3 = load_config()
  c3.model.code_dim = 32
  c3.init_from = str(tmp_path / 'model')
  with pytest.raises(errors.CheckpointError, match='mis-shaped'):
    state_lib.create_state(c3, denseav.build_model(c3), optim.make_optimizer(c3), mesh)
