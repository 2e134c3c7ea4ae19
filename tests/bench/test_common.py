"""bench.common.run_with_flags: a benchmark run in a process that other commands and libraries
already defined flags in."""
from absl import flags
from array_record.python import array_record_data_source  # noqa: F401  (defines grain_* flags)

from denseav_jax.bench import common


class _Bench:
  """A benchmark module's shape: define_flags() and main(argv)."""
  __name__ = 'fake_bench'

  @staticmethod
  def define_flags():
    flags.DEFINE_integer('repeats', 3, 'repeats')

  @staticmethod
  def main(argv):
    del argv
    return flags.FLAGS.repeats


def test_library_flags_stay_and_project_flags_are_set_aside_then_restored():
  fv = flags.FLAGS
  libs = [n for n in fv if n.startswith('grain_num_threads')]
  assert libs, 'array_record defines its grain_* flags on import'
  from denseav_jax import cli
  cli.define_flags()  # A command's --config / --workdir, defined by denseav_jax.cli.
  assert common.run_with_flags(_Bench, ['--repeats', '5']) == 5
  assert common.run_with_flags(_Bench, []) == 3  # Its own default again, not the last value.
  assert all(n in fv for n in libs) and fv[libs[0]].value is not None
  assert 'config' in fv and 'workdir' in fv and 'repeats' not in fv
  # Restored with the module that defined them, so the next call sets them aside again.
  assert fv.find_module_defining_flag('workdir') == 'denseav_jax.cli'
