"""Optional packages: a missing one is an error naming the setup.cfg extra that installs it.

The absence is simulated with `sys.modules[name] = None` (then `import name` raises
ModuleNotFoundError), in a subprocess for the command lines and with monkeypatch in-process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from denseav_jax import errors

from conftest import subprocess_env
CONVERT_HINT = 'pip install -e .[convert]'


def _run_without(blocked, module, args, tmp_path):
  """`python -m module *args` with the packages `blocked` made unimportable."""
  code = textwrap.dedent(f"""
      import runpy, sys
      for name in {list(blocked)!r}:
          sys.modules[name] = None
      sys.argv = [{module!r}] + {list(args)!r}
      runpy.run_module({module!r}, run_name='__main__', alter_sys=True)
      """)
  env = subprocess_env(devices=None)  # One CPU device.
  return subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=300)


def _block(monkeypatch, name):
  """Makes package `name` unimportable in this process (its loaded submodules too)."""
  for key in [k for k in sys.modules if k == name or k.startswith(f'{name}.')] + [name]:
    monkeypatch.setitem(sys.modules, key, None)


def _error_line(proc):
  """The command's one-line error: exit status 2, no traceback, the last stderr line."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert 'Traceback' not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith('error: '), proc.stderr
  return lines[-1]


# ------------------------------------------------------------------ errors.require

def test_require_returns_the_module():
  import json  # pylint: disable=import-outside-toplevel
  assert errors.require('json', 'convert', 'x') is json
  assert errors.require('os.path', 'convert', 'x') is os.path


@pytest.mark.parametrize('module_name', ['torch', 'torch.nn.functional'])
def test_require_missing_names_the_extra(monkeypatch, module_name):
  _block(monkeypatch, 'torch')
  with pytest.raises(errors.MissingExtra) as e:
    errors.require(module_name, 'convert', 'reading a checkpoint')
  msg = str(e.value)
  assert msg == f'reading a checkpoint needs torch, which is not installed: {CONVERT_HINT}'
  assert '\n' not in msg
  # A user error (one line at the command line) and still an ImportError.
  assert isinstance(e.value, errors.DenseAVError) and isinstance(e.value, ImportError)


def test_require_not_installed_package():
  with pytest.raises(errors.MissingExtra, match=r'needs no_such_pkg_denseav, which is not '
                     r'installed: pip install -e \.\[tpu\]$'):
    errors.require('no_such_pkg_denseav.sub', 'tpu', 'something')


def test_require_broken_package_says_so(tmp_path, monkeypatch):
  # Installed but failing to import (here: a dependency of its own is missing).
  pkg = tmp_path / 'broken_pkg_denseav'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('import no_such_dependency_denseav\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(errors.MissingExtra) as e:
    errors.require('broken_pkg_denseav', 'convert', 'reading')
  msg = str(e.value)
  assert msg.startswith('reading needs broken_pkg_denseav, which could not be imported '
                        "(ModuleNotFoundError: No module named 'no_such_dependency_denseav')")
  assert msg.endswith(CONVERT_HINT) and '\n' not in msg


# ------------------------------------------------------------------ convert

def test_convert_cli_without_torch_names_the_extra(tmp_path):
  ckpt = tmp_path / 'dino.pth'
  ckpt.write_bytes(b'not read: torch is missing first')
  proc = _run_without(['torch'], 'denseav_jax.convert',
                      ['--source', 'dino', '--input', str(ckpt), '--output',
                       str(tmp_path / 'out')], tmp_path)
  line = _error_line(proc)
  assert line == (f'error: reading {ckpt} (a torch.save file) needs torch, which is not '
                  f'installed: {CONVERT_HINT}')
  assert 'could not be read' not in proc.stderr
  assert not (tmp_path / 'out').exists()


def test_convert_cli_without_safetensors_names_the_extra(tmp_path):
  folder = tmp_path / 'hubert'  # A Hugging Face folder: its shards are read one by one.
  folder.mkdir()
  (folder / 'model.safetensors').write_bytes(b'\0' * 16)
  proc = _run_without(['safetensors'], 'denseav_jax.convert',
                      ['--source', 'hubert', '--input', str(folder), '--output',
                       str(tmp_path / 'out')], tmp_path)
  line = _error_line(proc)
  assert line.endswith(f'needs safetensors, which is not installed: {CONVERT_HINT}'), line
  assert 'model.safetensors (a safetensors file)' in line


def test_load_torch_file_without_torch(tmp_path, monkeypatch):
  from denseav_jax.conversion import torch_io  # pylint: disable=import-outside-toplevel
  ckpt = tmp_path / 'm.ckpt'
  ckpt.write_bytes(b'x')
  _block(monkeypatch, 'torch')
  with pytest.raises(errors.MissingExtra, match=r'needs torch, which is not installed: '
                     r'pip install -e \.\[convert\]$'):
    torch_io.load_torch_file(str(ckpt))
  # A file that does not exist is still reported as such first.
  with pytest.raises(errors.ConversionError, match='does not exist'):
    torch_io.load_torch_file(str(tmp_path / 'missing.ckpt'))


def test_bf16_safetensors_need_no_torch(tmp_path, monkeypatch):
  # bf16 is read by safetensors.numpy through ml_dtypes (a jax dependency) and comes back as
  # float32, like every other floating tensor; torch is not needed for it.
  torch = pytest.importorskip('torch')
  pytest.importorskip('safetensors')
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  from denseav_jax.conversion import torch_io  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'w.safetensors'
  save_file({'w': torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
             'i': torch.tensor([3], dtype=torch.int64)}, str(path))
  _block(monkeypatch, 'torch')
  sd = torch_io.load_torch_file(str(path))
  assert sd['w'].dtype == 'float32' and sd['w'].tolist() == [1.5, -2.0]
  assert sd['i'].dtype == 'int64'


def test_safetensors_dtype_numpy_cannot_hold_needs_torch(tmp_path, monkeypatch):
  numpy_reader = pytest.importorskip('safetensors.numpy')
  from denseav_jax.conversion import torch_io  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'w.safetensors'
  path.write_bytes(b'\0' * 16)

  def load_file(_):
    raise TypeError("data type 'F8_E8M0' not understood")

  monkeypatch.setattr(numpy_reader, 'load_file', load_file)
  _block(monkeypatch, 'torch')
  with pytest.raises(errors.MissingExtra, match=r'whose dtypes numpy cannot hold, needs torch, '
                     r'which is not installed: pip install -e \.\[convert\]$'):
    torch_io.load_torch_file(str(path))


# ------------------------------------------------------------------ benchmarks

@pytest.mark.parametrize('module', ['denseav_jax.testing.torch_models',
                                    'denseav_jax.testing.torch_denseav'])
def test_bench_torch_modules_without_torch(monkeypatch, module):
  _block(monkeypatch, 'torch')
  for name in ('denseav_jax.testing.torch_models', 'denseav_jax.testing.torch_denseav'):
    monkeypatch.delitem(sys.modules, name, raising=False)
  import importlib  # pylint: disable=import-outside-toplevel
  with pytest.raises(errors.MissingExtra, match=r'needs torch, which is not installed: '
                     r'pip install -e \.\[convert\]$'):
    importlib.import_module(module)


def test_bench_hubert_without_transformers(monkeypatch):
  pytest.importorskip('torch')
  from denseav_jax.testing import torch_models  # pylint: disable=import-outside-toplevel
  _block(monkeypatch, 'transformers')
  with pytest.raises(errors.MissingExtra, match=r'needs transformers, which is not installed: '
                     r'pip install -e \.\[convert\]$'):
    torch_models.hubert('base', num_layers=1)


def test_bench_run_cli_prints_one_line(capsys):
  from denseav_jax.bench import common  # pylint: disable=import-outside-toplevel

  def main(**kwargs):
    assert kwargs == {'reexec': True}
    raise errors.MissingExtra(f'x needs torch, which is not installed: {CONVERT_HINT}')

  with pytest.raises(SystemExit) as e:
    common.run_cli(main, reexec=True)
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: x needs torch, which is not installed: ' \
                                    f'{CONVERT_HINT}\n'
  assert common.run_cli(lambda: 7) == 7


def test_bench_model_cli_without_torch(tmp_path):
  proc = _run_without(['torch'], 'denseav_jax.bench.model',
                      ['--small', '--heap', 'default', '--repeats', '1'], tmp_path)
  line = _error_line(proc)
  assert line.endswith(f'needs torch, which is not installed: {CONVERT_HINT}'), line
