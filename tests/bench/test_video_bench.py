"""Smoke test of `python -m denseav_jax.bench.video` (a subprocess, as run): two short
generated videos through predict --video, each measured in a process of its own."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env

pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(importlib.util.find_spec('av') is None,
                                 reason='PyAV is not installed (pip install -e .[video])')]


def test_bench_video_small(tmp_path):
  out = tmp_path / 'bench_video.json'
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.bench.video', '--seconds', '1,2.5',
                      '--width', '96', '--height', '64', '--fps', '8', '--rate', '22050',
                      '--out', str(out)], cwd=ROOT, env=subprocess_env(devices=None),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  entries = json.loads(out.read_text())
  assert [e['seconds'] for e in entries] == [1.0, 2.5]
  assert [e['frames'] for e in entries] == [8, 20]
  for e in entries:
    assert e['peak_bytes'] >= e['ready_bytes'] > 0 and e['predict_s'] > 0
    assert (e['width'], e['height'], e['fps'], e['rate']) == (96, 64, 8.0, 22050)
  assert 'high-water GiB' in r.stdout and f'wrote 2 entries to {out}' in r.stdout
