"""A workdir on a bucket (gs://), end to end against a local GCS emulator whose proxy answers
every 101st request with a transient 503: train, SIGTERM, resume and evaluate. Every file a run
writes (checkpoints through TensorStore, metrics, config, TensorBoard, evaluation outputs)
goes through the storage clients, which retry; the run must end as one that saw no errors.
(Every retry waits a second or more, so the errors are kept few: the test's time.)"""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from denseav_jax import io as io_lib
from denseav_jax.testing import gcs

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py') + ':runlocal'
OVERRIDES = {'pretrain_steps': 3, 'num_train_steps': 6, 'log_every_steps': 1,
             'checkpoint_every_steps': 100, 'eval_at_end': False, 'eval_every_steps': 0,
             'eval_num_figures': 1}  # Saved in config.json, which evaluate reads.
TIMEOUT = 400


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_stop_resume_evaluate_on_a_bucket():
  with gcs.Emulator(bucket='runs', fail_every=101) as emu:
    env = dict(subprocess_env(), **emu.env())
    workdir = emu.url('run1')
    train = [sys.executable, '-m', 'denseav_jax.train', '--config', CONFIG, '--workdir',
             workdir, *[f'--config.{k}={v}' for k, v in OVERRIDES.items()]]

    # 1. Started, SIGTERM once step 3 is logged: the stop step is saved on the bucket.
    proc = subprocess.Popen(train, cwd=ROOT, env=env, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = []
    try:
      for line in proc.stdout:
        log.append(line)
        if line.startswith('step 3/'):
          proc.send_signal(signal.SIGTERM)
      assert proc.wait(TIMEOUT) == 0, ''.join(log)
    finally:
      if proc.poll() is None:
        proc.kill()
    text = ''.join(log)
    assert 'no locks' in text  # The one warning a bucket workdir gets.
    stop = [l for l in log if l.startswith('Stopping at step')]
    assert stop and f'saved {workdir}/checkpoints/' in stop[0], text
    stopped_at = int(stop[0].split()[3])
    assert stopped_at < 6

    # 2. The same command resumes from it, trains to the end and evaluates there (its
    # end-of-run evaluation writes metrics and figures to the bucket; `evaluate` reads a
    # run's config and checkpoints through the same storage layer as this resume).
    done = subprocess.run(train + ['--config.eval_at_end=True'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'Resumed from {workdir}/checkpoints/{stopped_at}' in done.stdout

    emu.activate()
    assert io_lib.listdir(workdir) == ['checkpoints', 'config.json', 'eval', 'tb',
                                       'train_metrics.jsonl']
    steps = [json.loads(l)['step'] for l in
             io_lib.read_text(f'{workdir}/train_metrics.jsonl').splitlines()]
    assert sorted(set(steps)) == list(range(1, 7))
    assert {str(stopped_at), '6'} <= set(io_lib.listdir(f'{workdir}/checkpoints'))
    metrics = json.loads(io_lib.read_text(f'{workdir}/eval/6/metrics.json'))
    assert {'retrieval/a2i_r1', 'speech_prompted/advanced_ap'} <= set(metrics)
    assert any(n.endswith('.png') for n in io_lib.listdir(f'{workdir}/eval/6'))
    assert any(n.startswith('events') for n in io_lib.listdir(f'{workdir}/tb'))
    assert emu.failed_requests >= 1  # The clients did retry through the proxy's 503s.
