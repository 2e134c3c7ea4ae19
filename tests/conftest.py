"""Test setup: 8 fake CPU devices (set before jax is imported, so sharded paths run), the
environment of the project's commands run as subprocesses (with one persistent compilation
cache per test process), and the order of files for pytest-xdist (docs/tests.md#running)."""

import os
import shutil
import sys
import tempfile

DEVICES = 8
# XLA's CPU code generation made cheap: compiling the tiny test models is most of the
# suite's time. Optimisation level 0 compiles them in about 60% of level 2's time, and XLA's
# older element-wise emitters (instead of its fusion emitters) in about 60% of that again
# (runlocal's train step: 5.9 -> 3.5 s). Values differ from the defaults' in float32
# rounding only (measured on runlocal's towers: 1.6e-6 relative at most with level 0,
# 1.7e-6 with both); every process a test compares runs with the same flags. The older
# emitters only in the test processes and the commands they start without the compilation
# cache: programs loaded from the cache with them aborted in an all-gather (XLA's 40 s
# rendezvous timeout) in two of four suite runs, in test_training_on_real_layouts.py. A
# caller's own setting of either flag wins.
_LEVEL_0 = '--xla_backend_optimization_level=0'
_OLDER_EMITTERS = '--xla_cpu_use_fusion_emitters=false'
_COUNT = '--xla_force_host_platform_device_count'
# The XLA_FLAGS this test run was started with (the controller's, before it added the
# above; pytest-xdist's workers inherit the controller's changed environment).
_CALLER = 'DENSEAV_JAX_TEST_CALLER_XLA_FLAGS'
os.environ.setdefault(_CALLER, os.environ.get('XLA_FLAGS', ''))


def xla_flags(devices: int | None, base: str | None = None, test_process: bool = False
              ) -> str:
  """XLA_FLAGS for `devices` fake CPU devices (None: XLA's one) on top of `base` (default:
  the caller's XLA_FLAGS, kept: e.g. --xla_cpu_max_isa=AVX2), at optimisation level 0,
  and with XLA's older emitters for a `test_process`."""
  if base is None:
    base = os.environ[_CALLER]
  flags = [f for f in base.split() if not f.startswith(_COUNT)]
  for flag in (_LEVEL_0, _OLDER_EMITTERS) if test_process else (_LEVEL_0,):
    if not any(f.startswith(flag.split('=')[0] + '=') for f in flags):
      flags.append(flag)
  if devices:
    flags.append(f'{_COUNT}={devices}')
  return ' '.join(flags)


os.environ['XLA_FLAGS'] = xla_flags(DEVICES, test_process=True)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

# gcsfs warns on every bucket when no Google credentials exist (the GCS emulator's tests).
logging.getLogger('gcsfs').setLevel(logging.ERROR)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent compilation cache per test process (each pytest-xdist worker has its own)
# for the single-process commands it starts: a run started again, or a command after a
# training, loads the programs instead of compiling them. Not for this process itself: with
# jax 0.10.2 an executable of the attention mixer loaded from the cache deadlocks in its
# all-gathers on 8 CPU devices (measured: XLA's 40 s rendezvous timeout, then abort), and
# tests here compile such programs more than once; the commands tests start with the cache
# run the dwconv mixer. Not shared between the workers, and JAX's default of caching only
# programs that took a second to compile is kept: with either (tried together), two
# dwconv-mixer runs of tests/data/test_training_on_real_layouts.py aborted the same way.
COMPILATION_CACHE = tempfile.mkdtemp(prefix='denseav-jax-test-cache-')


def pytest_unconfigure(config):
  del config  # Unused.
  shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


def subprocess_env(devices: int | None = DEVICES, cache: bool = True,
                   **extra: str) -> dict[str, str]:
  """The environment for a project command started by a test: this checkout on PYTHONPATH,
  this interpreter's virtual environment first on PATH (the launchers run `python`), CPU
  only with `devices` fake devices (the caller's other XLA flags kept), and, with `cache`,
  this test process's persistent compilation cache. Pass cache=False for multi-process CPU
  jobs (jax.distributed, e.g. launch/local_multiprocess.sh): the cache would hand them an
  executable compiled for another device assignment of the same program, which computes
  wrong numbers (docs/training.md#multi-host); and for models with the attention mixer
  (see COMPILATION_CACHE); and for a command whose numbers a test compares bit for bit
  with its own: without the cache a command compiles as the test process does (the older
  emitters too; with the cache it does not: see _OLDER_EMITTERS). `extra` is added."""
  env = dict(os.environ)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  bin_dir = os.path.dirname(sys.executable)
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS=xla_flags(devices, test_process=not cache),
             VIRTUAL_ENV=os.path.dirname(bin_dir),
             PATH=bin_dir + os.pathsep + os.environ.get('PATH', ''))
  if cache:
    env['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE
  env.update({k: str(v) for k, v in extra.items()})
  return env


# The files over a minute alone on 2 cores, longest first (measured; docs/tests.md#running).
LONGEST_FILES = (
    'tests/trainer/test_train.py', 'tests/trainer/test_resume.py',
    'tests/trainer/test_stop_then_save.py', 'tests/trainer/test_plan.py',
    'tests/conversion/test_convert.py', 'tests/evals/test_suite.py',
    'tests/data/test_training_on_real_layouts.py', 'tests/configs/test_paper_configs.py',
    'tests/models/test_towers.py', 'tests/inference/test_demo.py', 'tests/cli/test_cli.py',
    'tests/similarity/test_scalable.py', 'tests/losses/test_training_loss.py',
    'tests/experiments/test_sweep.py', 'tests/trainer/test_gcs_workdir.py',
    'tests/trainer/test_memory_levers.py')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """In a pytest-xdist worker (launch/test.sh: -n 2 --dist loadfile --no-loadscope-reorder:
  one worker runs a file whole, and xdist hands files out in the order collected): the
  longest files first (LONGEST_FILES), then the others with the most slow tests first, so
  no long file starts last."""
  if not hasattr(config, 'workerinput'):  # Not an xdist worker: the order stays.
    return
  path = lambda item: item.nodeid.split('::')[0]
  first, slow = {}, {}
  for i, item in enumerate(items):
    first.setdefault(path(item), i)
    slow[path(item)] = slow.get(path(item), 0) + any(item.iter_markers('slow'))
  rank = lambda p: LONGEST_FILES.index(p) if p in LONGEST_FILES else len(LONGEST_FILES)
  items.sort(key=lambda item: (rank(path(item)), -slow[path(item)], first[path(item)]))


def load_config(name: str = 'synthetic.py', arg: str | None = 'runlocal'):
  """configs/NAME's get_config(arg), through the project's one config loader."""
  from denseav_jax import configs  # pylint: disable=g-import-not-at-top
  return configs.load(f'configs/{name}' + (f':{arg}' if arg else ''))


@pytest.fixture
def tiny_config():
  return load_config()


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  """configs/synthetic.py:runlocal at its initial parameters (key 1), saved as a converted
  model (model_io.save_params): what test_predict.py and test_video.py predict with. Its
  config, model and parameters are shared: read them, do not change them."""
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax.checkpoint import model_io  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  config = load_config()
  model = denseav.build_model(config)
  params = params_lib.init_params(config, model, jax.random.key(1))
  model_dir = model_io.save_params(str(tmp_path_factory.mktemp('tiny_model') / 'm'), params,
                                   config)
  return dict(config=config, model=model, params=params, model_dir=model_dir)


def final_params(workdir, step: int) -> dict:
  """The parameters of WORKDIR/checkpoints/STEP of a run of the default test config, by
  '/'-joined path (numpy), for bitwise comparisons between runs."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from denseav_jax.checkpoint import model_io  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  c = load_config()
  abstract = params_lib.abstract_params(c, denseav.build_model(c))
  tree = model_io.load_train_params(f'{workdir}/checkpoints/{step}/state', abstract)
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}
