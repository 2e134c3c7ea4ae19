"""Every bad value a user can give a command is one line on stderr (exit 2), naming the key
(or flag, or file) and the value, before anything compiles: the table of
docs/training.md#bad-values-and-what-they-say, one row per case.

The commands run in this process (`cli.run_main` with the command's flags, as `python -m`
runs them), so the file takes seconds; one case runs as a real subprocess too.
"""

import importlib
import os
import subprocess
import sys
import wave

from absl import flags
import numpy as np
import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax import cli
from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.trainer import checks

# ml_collections' config flag loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

RUNLOCAL = os.path.join(ROOT, 'configs', 'synthetic.py') + ':runlocal'
MISSING = '/nonexistent/denseav'

# (id, command, flags, strings the one error line holds: the key or flag, and the value).
# {tmp} is the test's temporary folder; train / evaluate / predict / convert get
# --config RUNLOCAL and their other required flags unless the case gives --config itself.
CASES = [
    ('mesh_devices', 'train', ["--config.mesh=(('data', 16),)"],
     ['config.mesh', "('data', 16)", 'needs 16 devices', 'has 8', '-1']),
    ('mesh_axis', 'train', ["--config.mesh=(('model', 8),)"],
     ['config.mesh', "'model'", 'data, fsdp, tensor']),
    ('mesh_size', 'train', ["--config.mesh=(('data', 0),)"], ['config.mesh', "('data', 0)"]),
    ('mesh_dcn', 'train', ["--config.mesh_dcn=(('data', 3),)"],
     ['config.mesh_dcn', "('data', 3)", 'do not split into 3']),
    ('partitioning', 'train', ['--config.partitioning=zero3'],
     ['config.partitioning', "'zero3'", 'fsdp_tp']),
    ('num_heads', 'train', ['--config.model.num_heads=5'],
     ['config.model.num_heads=5', 'code_dim=16']),
    ('dtype', 'train', ['--config.model.dtype=float8'],
     ['config.model.dtype', "'float8'", 'bfloat16']),
    ('tower_microbatches', 'train', ['--config.model.tower_microbatches=3'],
     ['config.model.tower_microbatches=3', 'do not split into 3 equal chunks']),
    ('patch_size', 'train', ['--config.model.image.patch_size=5'],
     ['config.model.image.patch_size=5', 'input.image_size']),
    ('aligner', 'train', ['--config.model.audio_aligner=audio_big'],
     ['config.model.audio_aligner', "'audio_big'"]),
    ('sim_impl', 'train', ['--config.sim.impl=fast'], ['config.sim.impl', "'fast'", 'scalable']),
    ('sim_agg', 'train', ['--config.sim.agg=mean'], ['config.sim.agg', "'mean'", 'misa']),
    ('sim_block', 'train', ['--config.sim.block=(0, 8)'], ['config.sim.block', '(0, 8)']),
    ('loss_type', 'train', ['--config.loss.type=hinge'], ['config.loss.type', "'hinge'", 'nce']),
    ('loss_weight', 'train', ['--config.loss.weights.tv=-0.1'],
     ['config.loss.weights.tv', '-0.1', '>= 0']),
    ('loss_needs_data', 'train', ['--config.loss.weights.neg_audio=0.01'],
     ['config.loss.weights.neg_audio', '0.01', 'data.neg_audio']),
    ('batch_size', 'train', ['--config.batch_size=12'],
     ['config.batch_size=12', 'not divisible by the 8 devices']),
    ('dataset', 'train', ['--config.data.name=imagenet'], ['config.data.name', "'imagenet'"]),
    ('data_dir_unset', 'train', ['--config.data.name=places_audio'],
     ['config.data.name', "'places_audio'", 'data.raw_dir']),
    ('data_dir', 'train', ['--config.data.name=places_audio', f'--config.data.raw_dir={MISSING}'],
     ['config.data.raw_dir', MISSING, 'does not exist']),
    ('world', 'train', ['--config.data.world.num_classes=3'],
     ['config.data.world', 'num_classes', '3']),
    ('evaluator_type', 'train', ['--config.evals.retrieval.type=recall'],
     ['config.evals.retrieval.type', "'recall'", 'prompted_segmentation']),
    ('eval_dataset', 'train', ['--config.evals.retrieval.dataset=synthetic:nope'],
     ['config.evals.retrieval.dataset', "'synthetic:nope'"]),
    ('eval_batch_size', 'train', ['--config.eval_batch_size=0'],
     ['config.eval_batch_size=0', '>= 1']),
    ('lr_schedule', 'train', ['--config.lr_schedule=linear'],
     ['config.lr_schedule', "'linear'", 'cosine']),
    ('profile_steps', 'train', ['--config.profile_steps=(5,)'],
     ['config.profile_steps', '(5,)', '(first step, count)']),
    ('keep_best_metric', 'train', ['--config.keep_best_metric=nope/r1'],
     ['config.keep_best_metric', "'nope/r1'"]),
    ('init_from', 'train', [f'--config.init_from={MISSING}'],
     ['config.init_from', MISSING, 'does not exist']),
    ('config_key', 'train', ['--config.no_such_key=1'], ['--config.no_such_key=1', 'no key']),
    ('config_key_nested', 'train', ['--config.model.nope=3'], ['--config.model.nope=3']),
    ('config_value', 'train', ['--config.batch_size=many'], ['batch_size', 'many']),
    ('config_file', 'train', ['--config', os.path.join(ROOT, 'configs', 'nope.py')],
     ['nope.py']),
    ('evals_flag', 'evaluate', ['--evals', 'nope'], ['--evals', "'nope'"]),
    ('evaluate_mesh', 'evaluate', ["--config.mesh=(('data', 16),)"],
     ['config.mesh', "('data', 16)"]),
    ('evaluate_checkpoint', 'evaluate', ['--checkpoint', MISSING], ['--checkpoint', MISSING]),
    ('predict_checkpoint', 'predict', ['--checkpoint', MISSING], ['--checkpoint', MISSING]),
    ('predict_config', 'predict', ['--config.model.num_heads=5'],
     ['config.model.num_heads=5']),
    ('convert_config', 'convert', ['--config.sim.agg=mean'], ['config.sim.agg', "'mean'"]),
    ('convert_input', 'convert', ['--input', MISSING], ['--input', MISSING]),
    ('prepare_raw_dir', 'prepare', ['--raw_dir', MISSING], ['--raw_dir', MISSING]),
    ('prepare_workers', 'prepare', ['--workers=-1'], ['--workers=-1']),
    ('sweep_point', 'sweep', [], ["point 'h5'", 'config.model.num_heads=5']),
]


def _inputs(tmp):
  """An image and a sound for predict, a file for convert's --input."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(tmp, 'img.png'))
  with wave.open(os.path.join(tmp, 'a.wav'), 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(np.zeros(1600, np.int16).tobytes())
  with open(os.path.join(tmp, 'model.ckpt'), 'wb') as f:
    f.write(b'not read')
  with open(os.path.join(tmp, 'sweep.py'), 'w') as f:
    f.write('from denseav_jax.experiments.sweep import spec\n\n\ndef get_config(arg=None):\n'
            '  return spec.sweep_config(base="configs/synthetic.py:runlocal", '
            'points=spec.axis("heads", {"h5": {"model.num_heads": 5}}))\n')


def _args(command: str, extra: list[str], tmp: str) -> list[str]:
  """The command's required flags (a valid run but for the case's `extra`)."""
  config = [] if '--config' in extra else ['--config', RUNLOCAL]
  base = {
      'train': [*config, '--workdir', os.path.join(tmp, 'run')],
      'evaluate': [*config, '--workdir', os.path.join(tmp, 'run')],
      'predict': [*config, '--checkpoint', tmp, '--image', os.path.join(tmp, 'img.png'),
                  '--audio', os.path.join(tmp, 'a.wav'), '--out', os.path.join(tmp, 'o.png')],
      'convert': [*config, '--source', 'denseav', '--input', os.path.join(tmp, 'model.ckpt'),
                  '--output', os.path.join(tmp, 'out')],
      'prepare': ['--dataset', 'places_audio', '--raw_dir', tmp, '--out_dir',
                  os.path.join(tmp, 'prepared')],
      'sweep': ['--config', os.path.join(tmp, 'sweep.py'), '--workdir',
                os.path.join(tmp, 'sweep'), '--dry_run'],
  }[command]
  return base + extra  # absl: the last value of a flag given twice wins.


def run_command(command: str, args: list[str], monkeypatch, capsys):
  """`python -m denseav_jax.COMMAND *args` in this process: (exit code, stdout, stderr).

  The flags other commands defined in this process are set aside for the call and the
  ones it defines removed afterwards (as bench.common.run_with_flags does)."""
  module = importlib.import_module(f'denseav_jax.{command}')
  fv = flags.FLAGS
  ours = [n for n in list(fv) if (fv.find_module_defining_flag(n) or '').startswith(
      ('denseav_jax', '__main__'))]
  saved = {n: (fv[n], fv.find_module_defining_flag(n)) for n in ours}
  for n in saved:
    delattr(fv, n)
  kept = set(fv)
  monkeypatch.setattr(sys, 'argv', [f'python -m {module.__name__}', *args])
  code = 0
  try:
    module.define_flags()
    try:
      cli.run_main(module.main)
    except SystemExit as e:
      code = e.code
  finally:
    for n in set(fv) - kept:
      delattr(fv, n)
    for n, (flag, defined_by) in saved.items():
      fv[n] = flag
      fv.register_flag_by_module(defined_by, flag)
  out, err = capsys.readouterr()
  return code, out, err


def one_error_line(code, out: str, err: str) -> str:
  """The one `error:` line of a failed command (asserting there is exactly one and no
  traceback)."""
  assert code == 2, (code, out, err)
  assert 'Traceback' not in out + err, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


@pytest.mark.parametrize('name,command,extra,expected', CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_one_line(name, command, extra, expected, tmp_path, monkeypatch, capsys):
  del name
  tmp = str(tmp_path)
  _inputs(tmp)
  monkeypatch.chdir(ROOT)
  code, out, err = run_command(command, _args(command, extra, tmp), monkeypatch, capsys)
  line = one_error_line(code, out, err)
  for s in expected:
    assert s in line, (s, line)
  if command == 'train':
    assert not os.path.exists(os.path.join(tmp, 'run')), 'the workdir was created'


@pytest.mark.subprocess
def test_bad_value_through_python_m(tmp_path):
  """The real entry point in its own process: the README's resize-resume advice with a
  mesh larger than the machine."""
  r = subprocess.run(
      [sys.executable, '-m', 'denseav_jax.train', '--config', RUNLOCAL, '--workdir',
       str(tmp_path / 'run'), "--config.mesh=(('data', 16),)"],
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  line = one_error_line(r.returncode, r.stdout, r.stderr)
  assert "config.mesh=[('data', 16)] needs 16 devices, this job has 8" in line


def _shipped_configs() -> list[str]:
  out = []
  for name in ('synthetic', 'denseav', 'denseav_language', 'denseav_sound', 'denseav_2head'):
    path = os.path.join('configs', f'{name}.py')
    variants = getattr(configs.module(path), 'VARIANTS', ())
    out += [path] + [f'{path}:{v}' for v in variants if v]
  return out


@pytest.mark.parametrize('spec', _shipped_configs())
def test_shipped_configs_pass_the_checks(spec):
  """The checks refuse no config the project ships (without this machine's devices and
  data folders)."""
  checks.check_static(configs.load(spec), paths=False)


def test_errors_are_config_errors_and_value_errors():
  """Library callers catching ValueError still catch the checks' errors."""
  config = load_config()
  config.model.num_heads = 5
  with pytest.raises(errors.ConfigError, match='model.num_heads=5'):
    checks.check_model(config)
  with pytest.raises(ValueError):
    checks.check_model(config)
