"""denseav_jax.sweep: sweep specs, each run's config and its flags, the runner's layout and
scheduling, the SLURM launcher (fake sbatch / squeue), the TPU launcher (tpu_pod.sh's dry
run), and one real sweep end to end: interrupted with SIGTERM, then resumed."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

from absl import flags
from ml_collections import config_flags
import pytest

from conftest import ROOT, subprocess_env
from denseav_jax import errors
from denseav_jax.experiments.sweep import configs
from denseav_jax.experiments.sweep import launchers
from denseav_jax.experiments.sweep import runner
from denseav_jax.experiments.sweep import schedule
from denseav_jax.experiments.sweep import spec
from denseav_jax.experiments.sweep import status

BASE = 'configs/synthetic.py:runlocal'
AGG = spec.axis('agg', {'misa': {'sim.agg': 'misa'}, 'cavmae': {'sim.agg': 'cavmae'}})
TIMEOUT = 900  # Seconds for any subprocess (a tiny training takes ~40 s on 2 idle cores).


def _sweep(points=AGG, seeds=(0,), overrides=None, **kw):
  return spec.sweep_config(base=BASE, points=points, seeds=seeds,
                           overrides={'num_train_steps': 4} if overrides is None else overrides,
                           **kw)


def _executable(path, text):
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(path)


def _metrics(run_dir, steps, value=0.5):
  folder = os.path.join(run_dir, 'eval', str(steps))
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'metrics.json'), 'w') as f:
    json.dump({'speech_prompted/basic_ap': value, 'speech_prompted/basic_iou': value / 2,
               'retrieval/a2i_r1': value / 4}, f)


# ------------------------------------------------------------------------ spec


def test_axis_product_union_labels_and_coords():
  heads = spec.axis('heads', {'k1': {'model.num_heads': 1}, 'k2': {'model.num_heads': 2}})
  points = spec.product(AGG, heads)
  assert [p.label for p in points] == ['misa-k1', 'misa-k2', 'cavmae-k1', 'cavmae-k2']
  assert points[1].coords == (('agg', 'misa'), ('heads', 'k2'))
  assert points[1].overrides == {'sim.agg': 'misa', 'model.num_heads': 2}
  both = spec.union(spec.axis('ref', {'all': {}}), spec.with_overrides(AGG, {'lr': 1e-3}))
  assert [p.label for p in both] == ['all', 'misa', 'cavmae']
  assert both[1].overrides == {'lr': 1e-3, 'sim.agg': 'misa'}
  assert both[1].to_dict() == {'label': 'misa', 'coords': {'agg': 'misa'},
                               'overrides': {'lr': 1e-3, 'sim.agg': 'misa'}}
  assert spec.run_name(points[0], 3) == 'misa-k1_seed3'


def test_spec_errors():
  other = spec.axis('impl', {'x': {'sim.agg': 'mima'}})
  with pytest.raises(ValueError, match=r"points 'misa' and 'x' set sim.agg to 'misa' and "
                     r"'mima'"):
    spec.product(AGG, other)
  with pytest.raises(ValueError, match="two points of the sweep are labelled 'misa'"):
    spec.union(AGG, AGG)
  with pytest.raises(ValueError, match='axis name'):
    spec.axis('bad name', {'a': {}})
  with pytest.raises(ValueError, match='not a dotted config key'):
    spec.axis('a', {'x': {'sim..agg': 1}})


# --------------------------------------------------------------------- configs


def test_unknown_key_names_the_point_the_key_and_the_valid_keys(tmp_path):
  points = spec.union(AGG, spec.axis('typo', {'bad': {'sim.aggg': 'misa'}}))
  with pytest.raises(errors.UserError, match=r"^point 'bad': unknown config key sim.aggg "
                     r'\(keys of sim: agg, backward, block, .*\)$'):
    runner.load(_sweep(points), str(tmp_path))
  points = spec.axis('typo', {'bad': {'nosuch.key': 1}})
  with pytest.raises(errors.UserError, match=r'unknown config key nosuch.key \(keys of the '
                     r'config: adam_eps, '):
    runner.load(_sweep(points), str(tmp_path))


def test_coercion_and_checks(tmp_path):
  points = spec.axis('x', {'a': {'lr': 1, 'data.world.train_voices': ['en-us', 'en-gb'],
                                 'mesh': [['data', 2], ['fsdp', -1]]}})
  run = runner.load(_sweep(points), str(tmp_path)).runs[0]
  assert run.overrides['lr'] == 1.0 and isinstance(run.overrides['lr'], float)
  assert run.overrides['data.world.train_voices'] == ('en-us', 'en-gb')
  assert run.overrides['mesh'] == (('data', 2), ('fsdp', -1))
  for key, value, expected in (('num_train_steps', 2.5, 'an int'),
                               ('sim.vad', 1, 'True or False'),
                               ('sim.agg', 3, 'a string'),
                               ('sim.block', 8, 'a tuple or list')):
    bad = spec.axis('x', {'p': {key: value}})
    with pytest.raises(errors.UserError, match=f"^point 'p': config key {key} takes {expected}"):
      runner.load(_sweep(bad), str(tmp_path))
  off = spec.axis('x', {'p': {'eval_at_end': False}})
  with pytest.raises(errors.UserError, match="^point 'p': eval_at_end is False"):
    runner.load(_sweep(off), str(tmp_path))
  seeded = spec.axis('x', {'p': {'seed': 3}})
  with pytest.raises(errors.UserError, match="^point 'p': overrides seed; list the seeds"):
    runner.load(_sweep(seeded), str(tmp_path))
  with pytest.raises(errors.UserError, match='config.base=configs/nope.py: no file'):
    runner.load(spec.sweep_config(base='configs/nope.py', points=AGG), str(tmp_path))


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # config_flags.
def test_override_flags_round_trip_through_the_train_cli_flags(tmp_path):
  """The flags of a run, parsed by ml_collections' config flag as `python -m
  denseav_jax.train` parses them, give the config the runner built in-process."""
  retrieval = {'type': 'retrieval', 'dataset': 'synthetic:retrieval', 'num_examples': 32}
  points = spec.axis('x', {'a': {
      'sim.agg': 'cavmae', 'lr': 1, 'sim.vad': False, 'eval_at_end': True,
      'data.world.train_voices': ['en-us', 'en-gb'], 'data.manifest_dir': "it's \"quoted\"",
      'data.world.speed_perturb': (0.9, 1.1), 'mesh': (('data', 2), ('fsdp', -1)),
      'profile_steps': (), 'init_from': '', 'data.world.eval_voices': ('en-029',),
      'evals.retrieval': retrieval, 'loss.weights.tv': 1e-5}})
  sweep = runner.load(_sweep(points, seeds=(7,), overrides={'num_train_steps': 5}),
                      str(tmp_path))
  run = sweep.runs[0]
  built, _ = configs.build(configs.load_base(BASE), {'num_train_steps': 5,
                                                    **points[0].overrides}, 'x')
  built.seed = 7
  argv = ['train', '--config', os.path.join(ROOT, BASE), *run.flags]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'c', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  assert fv.config.to_dict() == built.to_dict()
  assert fv.config.seed == 7 and fv.config.num_train_steps == 5
  assert fv.config.data.world.train_voices == ('en-us', 'en-gb')
  assert fv.config.data.manifest_dir == "it's \"quoted\""  # Quotes survive the flags.
  assert fv.config.evals.retrieval.num_examples == 32


# ---------------------------------------------------------------- layout, runs


def test_dry_run_only_and_changed_point(tmp_path, capsys):
  workdir = str(tmp_path / 'sweep')
  assert runner.run_sweep(_sweep(seeds=(0, 1)), workdir, dry_run=True, only=['cavmae']) == 0
  out = capsys.readouterr().out
  assert 'cavmae_seed0: new' in out and 'cavmae_seed1: new' in out and 'misa' not in out
  assert '--config.seed=1 --config.num_train_steps=4 --config.sim.agg=cavmae' in out
  assert not os.path.exists(workdir)  # A dry run writes nothing.
  with pytest.raises(errors.UserError, match=r'^--only=mima: no point labelled mima in this '
                     r'sweep \(points: misa, cavmae\)$'):
    runner.run_sweep(_sweep(), workdir, dry_run=True, only=['mima'])

  sweep = runner.load(_sweep(), workdir)
  os.makedirs(workdir)
  runner.write_layout(sweep, sweep.runs, None, ['sweep'], 'local')
  point = status.read_json(os.path.join(workdir, 'misa_seed0', 'point.json'))
  assert point['overrides'] == {'num_train_steps': 4, 'sim.agg': 'misa'}
  assert point['command'].endswith(f'--workdir {workdir}/misa_seed0 --config.seed=0 '
                                   '--config.num_train_steps=4 --config.sim.agg=misa')
  _metrics(os.path.join(workdir, 'misa_seed0'), 4)
  more = spec.union(AGG, spec.axis('extra', {'mima': {'sim.agg': 'mima'}}))
  assert runner.run_sweep(_sweep(more), workdir, dry_run=True) == 0  # New points are fine.
  assert 'misa_seed0: finished' in capsys.readouterr().out
  changed = spec.axis('agg', {'misa': {'sim.agg': 'mima'}})
  with pytest.raises(errors.UserError, match=r"^point 'misa' is not the one .*sweep.json "
                     r"recorded \(overrides .*'sim.agg': 'misa'.* -> .*'sim.agg': 'mima'.*\): "
                     r'use a new --workdir, or rename the point$'):
    runner.run_sweep(_sweep(changed), workdir, dry_run=True)
  with pytest.raises(errors.UserError, match=r"^point 'misa' is not the one .*\(overrides "):
    runner.run_sweep(_sweep(overrides={'num_train_steps': 8}), workdir, dry_run=True)


class _Fake:
  """A launcher whose runs are `python -c SCRIPT` (SCRIPT per run name)."""
  name = 'fake'

  def __init__(self, scripts, parallel=1):
    self.scripts, self.slots = scripts, [None] * parallel

  def command(self, run, slot):
    del slot
    return [sys.executable, '-c', self.scripts[run.name]], {'RUN': run.dir}


def _runs(tmp_path, labels):
  points = spec.axis('x', {l: {} for l in labels})
  return runner.load(_sweep(points), str(tmp_path)).runs


def test_scheduler_finished_failed_stopped_and_fail_fast(tmp_path, capsys):
  runs = _runs(tmp_path, ['ok', 'bad', 'early'])
  finish = ('import json, os; d = os.path.join(os.environ["RUN"], "eval", "4"); '
            'os.makedirs(d); json.dump({"speech_prompted/basic_ap": 0.25}, '
            'open(os.path.join(d, "metrics.json"), "w"))')
  scripts = {'ok_seed0': finish, 'bad_seed0': 'print("error: boom"); raise SystemExit(3)',
             'early_seed0': 'print("Stopping at step 2")'}
  result = schedule.Scheduler(runs, _Fake(scripts, parallel=2), poll_s=0.02).run()
  assert [r.name for r in result.finished] == ['ok_seed0']
  assert [r.name for r in result.failed] == ['bad_seed0']
  assert [r.name for r in result.stopped] == ['early_seed0']
  out = capsys.readouterr().out
  assert re.search(r'finished ok_seed0 in \d+ s: speech_prompted/basic_ap=0.250\n', out)
  log = os.path.join(runs[1].dir, 'train.log')
  assert re.search(r'failed bad_seed0 \(exit status 3\) after \d+ s: error: boom; log '
                   + re.escape(log), out)
  assert re.search(r'stopped early_seed0 after \d+ s \(no checkpoint yet\): resumable', out)
  with open(log) as f:
    text = f.read()
  assert text.startswith('--- denseav_jax.sweep ') and 'exit status 3' in text

  runs = _runs(tmp_path / 'ff', ['bad', 'ok'])
  result = schedule.Scheduler(runs, _Fake(scripts | {'bad_seed0': 'raise SystemExit(1)'}),
                              fail_fast=True, poll_s=0.02).run()
  assert [r.name for r in result.skipped] == ['ok_seed0'] and not result.finished
  # Finished earlier: skipped, not started.
  result = schedule.Scheduler(_runs(tmp_path, ['ok']), _Fake({}), poll_s=0.02).run()
  assert [r.name for r in result.finished] == ['ok_seed0']
  assert 'ok_seed0: finished earlier' in capsys.readouterr().out


def test_scheduler_signals(tmp_path, capsys):
  """SIGINT: SIGTERM to the running child, nothing more started, exit status 130; a second
  signal kills a child that ignores SIGTERM."""
  runs = _runs(tmp_path, ['a', 'b'])
  ready, got = tmp_path / 'ready', tmp_path / 'got_term'
  script = ('import pathlib, signal, time\n'
            f'signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(got)!r}).touch())\n'
            f'pathlib.Path({str(ready)!r}).touch()\n'
            'while True: time.sleep(0.05)\n')

  def interrupt():
    for wait_for in (ready, got):
      end = time.time() + 60
      while not wait_for.exists() and time.time() < end:
        time.sleep(0.02)
      os.kill(os.getpid(), signal.SIGINT)

  thread = threading.Thread(target=interrupt, daemon=True)
  thread.start()
  result = schedule.Scheduler(runs, _Fake({'a_seed0': script}), poll_s=0.02).run()
  thread.join(5)
  assert result.interrupted == signal.SIGINT and result.exit_status == 130
  assert got.exists() and [r.name for r in result.stopped] == ['a_seed0']
  assert [r.name for r in result.skipped] == ['b_seed0']
  out = capsys.readouterr().out
  assert 'SIGINT received: asking the 1 running run(s) to save a checkpoint' in out
  assert 'second signal: killing the running runs' in out


class _FakeRemote(_Fake):
  """A _Fake whose runs' trainers are "remote": its stop command (as tpu_pod.sh STOP) prints
  a line per worker, LINES[run name], and touches RUN/stop_ran."""

  def __init__(self, scripts, lines):
    super().__init__(scripts)
    self.lines = lines

  def stop_command(self, run, slot):
    del slot
    printed = '; '.join(f'echo "tpu_pod.sh: stop: {l}"' for l in self.lines[run.name])
    return ['bash', '-c', f'{printed}; touch {run.dir}/stop_ran'], {'STOP': '1'}


def test_scheduler_stops_remote_runs_through_the_launcher(tmp_path, capsys):
  """A launcher with stop_command: on SIGINT the stop runs (no SIGTERM to the local child,
  which ends by itself once the remote trainers have); its outcome goes to
  RUN/remote_stop.json; a trainer still running is not counted as stopped, and the local
  child gets SIGTERM after stop_grace_s."""
  # The local child ends when the stop has run (as gcloud ssh ends when the trainers do),
  # or on SIGTERM (marking that it got one).
  script = ('import os, pathlib, signal, sys, time\n'
            'run = pathlib.Path(os.environ["RUN"])\n'
            'signal.signal(signal.SIGTERM, lambda *a: ((run / "got_term").touch(), '
            'sys.exit(0)))\n'
            '(run / "ready").touch()\n'
            'while not (run / "stop_ran").exists() or "hang" in run.name: time.sleep(0.02)\n')
  for name, lines, state in (
      ('ok', ['w0: saved at step 7', 'w1: saved at step 7'], 'stopped'),
      ('hang', ['w0: still running (pid 5, 1 s after SIGTERM)', 'w1: saved at step 7'],
       'still_running')):
    runs = _runs(tmp_path / name, [name, 'next'])

    def interrupt(run_dir=runs[0].dir):
      end = time.time() + 60
      while not os.path.exists(os.path.join(run_dir, 'ready')) and time.time() < end:
        time.sleep(0.02)
      os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    launcher = _FakeRemote({f'{name}_seed0': script}, {f'{name}_seed0': lines})
    result = schedule.Scheduler(runs, launcher, poll_s=0.02, stop_grace_s=0.5).run()
    thread.join(5)
    run_dir = runs[0].dir
    assert [r.name for r in getattr(result, state)] == [f'{name}_seed0']
    assert [r.name for r in result.skipped] == ['next_seed0']
    record = status.read_json(os.path.join(run_dir, status.REMOTE_STOP_FILE))
    assert [w['text'] for w in record['workers']] == [l.split(': ', 1)[1] for l in lines]
    assert result.remote[f'{name}_seed0'] == record['workers']
    # The local child got SIGTERM only where a remote trainer did not stop.
    assert os.path.exists(os.path.join(run_dir, 'got_term')) == (name == 'hang')
    out = capsys.readouterr().out
    assert f'{name}_seed0 on None: w0 ' in out
    if name == 'hang':
      assert 'its trainers on None are still running after the stop' in out
      assert 'stopped hang_seed0' not in out


def test_local_memory_fraction(monkeypatch, tmp_path):
  run = _runs(tmp_path, ['a'])[0]
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  argv, env = launchers.Local(2).command(run, None)
  assert env == {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}
  assert argv[:3] == [sys.executable, '-m', 'denseav_jax.train']
  assert launchers.Local(None).command(run, None)[1] == {}
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.3')
  assert launchers.Local(3).command(run, None)[1] == {}


# ------------------------------------------------------------------- launchers


@pytest.fixture(name='fake_slurm')
def fixture_fake_slurm(tmp_path, monkeypatch):
  """Fake sbatch (records its arguments, CONFIG and cwd; prints job ids 101, 102, ...) and
  squeue (lists the ids in `queue` as PENDING)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  calls, queue = tmp_path / 'sbatch_calls', tmp_path / 'queue'
  monkeypatch.setenv('SBATCH', _executable(bin_dir / 'sbatch', f'''
      #!/usr/bin/env bash
      [ -z "${{FAIL:-}}" ] || {{
        echo "sbatch: error: invalid partition specified: x" >&2; exit 1; }}
      n=$(cat {tmp_path}/counter 2>/dev/null || echo 100); n=$((n + 1))
      echo $n > {tmp_path}/counter
      {{ echo "CONFIG=$CONFIG PWD=$PWD"; printf '%s\\n' "$@"; echo ---; }} >> {calls}
      echo "$n;cluster"
      '''))
  monkeypatch.setenv('SQUEUE', _executable(bin_dir / 'squeue', f'''
      #!/usr/bin/env bash
      [ "$1 $2 $4 $5" = "-h -j -o %T" ] || {{ echo "bad args: $*" >&2; exit 2; }}
      if grep -qx "$3" {queue} 2>/dev/null; then echo PENDING; else
        echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
      '''))
  monkeypatch.setenv('SBATCH_FLAGS', '--partition=gpu --time=1:00:00')
  monkeypatch.delenv('FAIL', raising=False)

  def submitted():
    if not calls.exists():
      return []
    blocks = calls.read_text().split('---\n')[:-1]
    return [b.splitlines() for b in blocks]
  return dict(calls=submitted, queue=queue)


def test_slurm_submits_records_and_does_not_resubmit_queued_runs(tmp_path, fake_slurm,
                                                                 capsys, monkeypatch):
  workdir = str(tmp_path / 'abl')
  assert runner.run_sweep(_sweep(), workdir, launcher='slurm') == 0
  calls = fake_slurm['calls']()
  assert len(calls) == 2
  misa = os.path.join(workdir, 'misa_seed0')
  assert calls[0] == [
      f'CONFIG={BASE} PWD={ROOT}', '--parsable', '--job-name=denseav-abl-misa_seed0',
      f'--output={misa}/train.log', '--partition=gpu', '--time=1:00:00',
      'launch/slurm.sbatch', misa, '--config.seed=0', '--config.num_train_steps=4',
      '--config.sim.agg=misa']
  assert status.read_json(os.path.join(misa, 'slurm_job.json'))['job_id'] == '101'
  assert 'misa_seed0: submitted as job 101 (new)' in capsys.readouterr().out

  fake_slurm['queue'].write_text('101\n102\n')
  assert runner.run_sweep(_sweep(), workdir, launcher='slurm') == 0
  assert len(fake_slurm['calls']()) == 2
  out = capsys.readouterr().out
  assert 'misa_seed0: queued as job 101 (PENDING): not resubmitted' in out
  assert '0 finished, 2 already queued, 0 submitted' in out

  fake_slurm['queue'].write_text('')  # misa left the queue unfinished; cavmae finished.
  _metrics(os.path.join(workdir, 'cavmae_seed0'), 4)
  assert runner.run_sweep(_sweep(), workdir, launcher='slurm') == 0
  calls = fake_slurm['calls']()
  assert len(calls) == 3 and calls[2][2] == '--job-name=denseav-abl-misa_seed0'
  assert status.read_json(os.path.join(misa, 'slurm_job.json'))['job_id'] == '103'
  out = capsys.readouterr().out
  assert 'cavmae_seed0: finished' in out and '1 finished, 0 already queued, 1 submitted' in out
  results = status.read_json(os.path.join(workdir, 'results.json'))
  assert list(results) == ['cavmae_seed0'] and results['cavmae_seed0']['step'] == 4
  assert results['cavmae_seed0']['coords'] == {'agg': 'cavmae'}
  with open(os.path.join(workdir, 'results.md')) as f:
    assert '| cavmae' in f.read()

  monkeypatch.setenv('FAIL', '1')
  fake_slurm['queue'].write_text('')
  with pytest.raises(errors.UserError, match=r'^sbatch failed for misa_seed0 \(exit 1\): '
                     r'sbatch: error: invalid partition specified: x$'):
    runner.run_sweep(_sweep(), workdir, launcher='slurm')
  with pytest.raises(errors.UserError, match='--parallel does not apply to --launcher slurm'):
    runner.run_sweep(_sweep(), workdir, launcher='slurm', parallel=2)


def test_tpu_launcher_runs_tpu_pod_sh_per_run_on_its_own_vm(tmp_path, monkeypatch, capsys):
  for var in ('PROJECT', 'CONFIG', 'SKIP_COPY', 'SKIP_INSTALL', 'DETACH', 'STOP', 'SSH_FLAGS',
              'GCLOUD', 'REMOTE_DIR'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('TPU', 'vm-a,vm-b')
  monkeypatch.setenv('ZONE', 'us-zone1-a')
  monkeypatch.setenv('DRY_RUN', '1')
  workdir = str(tmp_path / 'sweep')
  with pytest.raises(errors.UserError, match=r'^--parallel=3: TPU=vm-a,vm-b names 2 TPU VM\(s\)'):
    runner.run_sweep(_sweep(), workdir, launcher='tpu', parallel=3)
  # DRY_RUN: tpu_pod.sh prints its commands and exits 0 without training: stopped runs.
  assert runner.run_sweep(_sweep(seeds=(0, 1)), workdir, launcher='tpu', parallel=2) == 1
  out = capsys.readouterr().out
  assert 'stopped, resumable: misa_seed0' in out
  used = set()
  for name, agg, seed in (('misa_seed0', 'misa', 0), ('cavmae_seed1', 'cavmae', 1)):
    run_dir = os.path.join(workdir, name)
    with open(os.path.join(run_dir, 'train.log')) as f:
      log = f.read()
    header = log.splitlines()[0]
    tpu = header.split('TPU=')[1].split()[0]
    used.add(tpu)
    assert f'CONFIG={BASE} bash launch/tpu_pod.sh {run_dir}' in header
    assert (f'gcloud compute tpus tpu-vm ssh {tpu} --zone=us-zone1-a --worker=all --command '
            in log)
    assert (f'python -m denseav_jax.train --config {BASE} --workdir {run_dir} --distributed '
            f'--cluster=tpu --config.seed={seed} --config.num_train_steps=4 '
            f'--config.sim.agg={agg}') in log
  assert used <= {'vm-a', 'vm-b'}
  monkeypatch.delenv('TPU')
  with pytest.raises(errors.UserError, match='--launcher tpu: set TPU to the TPU VM names'):
    runner.run_sweep(_sweep(), workdir, launcher='tpu')


# -------------------------------------------------------------------- the CLI


def _stop(proc):
  """Ends a runner left running by a failed test, and its trainings (a second SIGTERM makes
  the runner SIGKILL them)."""
  for _ in range(2):
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      time.sleep(1)
  try:
    proc.wait(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()


def _unblock_signals():
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.mark.subprocess
def test_cli_dry_run_seeds_override_and_errors(tmp_path):
  cfg = tmp_path / 'abl.py'
  cfg.write_text(textwrap.dedent(f'''
      from denseav_jax.experiments.sweep import spec
      def get_config(arg=None):
        points = {{'misa': {{'sim.agg': 'misa'}}}}
        if arg == 'typo':
          points['bad'] = {{'sim.nope': 1}}
        return spec.sweep_config(base={BASE!r}, points=spec.axis('agg', points))
      '''))
  cmd = [sys.executable, '-m', 'denseav_jax.sweep', '--config', str(cfg), '--workdir',
         str(tmp_path / 'w')]
  r = subprocess.run(cmd + ['--dry_run', '--only', 'misa', '--config.seeds=(0,1)'], cwd=ROOT,
                     env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert r.returncode == 0, r.stderr
  assert 'misa_seed0: new' in r.stdout and 'misa_seed1: new' in r.stdout
  cmd[cmd.index(str(cfg))] = f'{cfg}:typo'
  r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                     timeout=TIMEOUT)
  assert r.returncode == 2 and not r.stdout
  assert r.stderr.splitlines() == [
      "error: point 'bad': unknown config key sim.nope (keys of sim: agg, backward, block, "
      'cal_init, collective, head_agg, impl, mask_silence, nonneg, use_cls, vad, '
      'vad_frame_ms, vad_threshold_db)']


@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_end_to_end_interrupted_and_resumed(tmp_path):
  """Two points (the default train voices and two of them: the same compiled programs, so
  the persistent compilation cache serves the second run) of 20 steps, evaluated without
  figures. SIGTERM to the runner while the second trains: exit 143, that run saved a
  checkpoint. The same command then skips the first run and resumes the second."""
  steps = 20
  cfg = tmp_path / 'voices.py'
  cfg.write_text(textwrap.dedent(f'''
      from denseav_jax.experiments.sweep import spec
      def get_config(arg=None):
        return spec.sweep_config(
            base={BASE!r}, seeds=(0,), metric='speech_prompted/advanced_ap',
            overrides={{'num_train_steps': {steps}, 'log_every_steps': 1,
                        'eval_num_figures': 0}},
            points=spec.axis('voices', {{'v4': {{}}, 'v2': {{
                'data.world.train_voices': ['en-us', 'en-gb']}}}}))
      '''))
  workdir = tmp_path / 'sweep'
  cmd = [sys.executable, '-m', 'denseav_jax.sweep', '--config', str(cfg), '--workdir',
         str(workdir), '--progress_every', '2']
  env = subprocess_env()
  first, second = workdir / 'v4_seed0', workdir / 'v2_seed0'
  out1 = tmp_path / 'sweep1.out'
  with open(out1, 'w') as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=_unblock_signals)
  try:
    end = time.time() + 2 * TIMEOUT  # The whole first run, the start of the second.
    while (status.last_step(str(second)) or 0) < 2:
      assert proc.poll() is None, out1.read_text()
      assert time.time() < end, 'the second run did not start training in time'
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 143, out1.read_text()
  finally:
    _stop(proc)
  text = out1.read_text()
  assert 'finished v4_seed0 in ' in text and 'speech_prompted/advanced_ap=' in text
  assert '[sweep 0/2 done, 1 running, 1 to go] started v4_seed0 (new)' in text
  assert 'ETA' in text  # A status line.
  assert text.rstrip().endswith('interrupted: run the same command to resume')
  assert status.is_finished(str(first), steps) and not status.is_finished(str(second), steps)
  assert 2 <= status.last_checkpoint(str(second)) < steps
  assert 'Received SIGTERM' in (second / 'train.log').read_text()
  first_log = (first / 'train.log').read_text()

  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=_unblock_signals)
  try:
    stdout, _ = proc.communicate(timeout=TIMEOUT)
  finally:
    _stop(proc)
  assert proc.returncode == 0, stdout
  assert 'v4_seed0: finished earlier' in stdout
  assert (first / 'train.log').read_text() == first_log  # Not started again.
  assert 'Resumed from' in (second / 'train.log').read_text()
  assert 'finished v2_seed0 in ' in stdout
  results = json.loads((workdir / 'results.json').read_text())
  assert sorted(results) == ['v2_seed0', 'v4_seed0']
  assert results['v2_seed0']['coords'] == {'voices': 'v2'}
  assert 'speech_prompted/advanced_ap' in results['v2_seed0']['metrics']
  table = (workdir / 'results.md').read_text()
  rows = [[c.strip() for c in l.strip('|').split('|')] for l in table.splitlines()
          if l.startswith('| v')]  # One row per point, in the sweep's order.
  assert [row[0].split('_seed')[0] for row in rows] == ['v4', 'v2']
  number = re.compile(r'(\*\*)?\d+\.\d( ± \d+\.\d)?(\*\*)?')
  assert all(sum(bool(number.fullmatch(c)) for c in row) >= 4 for row in rows), table
  assert 'mAP' in table.splitlines()[0]
  assert table in stdout
  sweep_json = json.loads((workdir / 'sweep.json').read_text())
  assert [p['label'] for p in sweep_json['points']] == ['v4', 'v2']
