"""Pieces every benchmark module shares: list-valued flags, the --heap re-exec, the --out JSON
file, the optional PyTorch packages (`require`) and in-process runs (`run_with_flags`).

Benchmarks are commands in the project's one style (denseav_jax.cli): each defines its flags
in `define_flags()`, called only under `if __name__ == '__main__'` (importing a benchmark
adds no global flags), and `main(argv)`, started with `cli.run_main`, reads flags.FLAGS.
"""

import os
import platform
import sys
import types

from absl import flags

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.bench import heap

# The setup.cfg extra with the PyTorch side of the benchmarks: torch, transformers (HuBERT)
# and safetensors, as denseav_jax.convert needs them.
TORCH_EXTRA = 'convert'


def require(module_name: str, what: str):
  """`module_name` imported, or errors.MissingExtra naming `pip install -e .[convert]`."""
  return errors.require(module_name, TORCH_EXTRA, what)


def run_cli(main, **kwargs):
  """Runs `main(**kwargs)` as a command: a DenseAVError (a missing extra, ...) is one line on
  stderr and exit status 2, not a traceback. The benchmarks themselves start through
  cli.run_main, which does the same for absl commands."""
  try:
    return main(**kwargs)
  except errors.DenseAVError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------ flags

# The flags the helpers below define belong to the benchmark that calls them (its --help
# lists them with its own).
flags.disclaim_key_flags()


def define_names(name: str, allowed, default, help_text: str) -> None:
  """A comma-separated list flag whose items must be among `allowed` (checked by `names`)."""
  flags.DEFINE_list(name, list(default), f'{help_text} (comma-separated, of: '
                    f'{",".join(allowed)})')


def names(name: str, allowed) -> list[str]:
  """The list flag `name`, each item checked against `allowed` (else one-line UserError)."""
  value = [x.strip() for x in flags.FLAGS[name].value if x.strip()]
  bad = [x for x in value if x not in allowed]
  if bad:
    raise errors.UserError(f'--{name}={",".join(value)}: {", ".join(bad)} not among '
                           f'{", ".join(allowed)}')
  return value


def ints(name: str, count: int | None = None) -> list[int]:
  """The list flag `name` as integers (`count` of them when given), else a UserError."""
  value = [x.strip() for x in flags.FLAGS[name].value if x.strip()]
  try:
    out = [int(x) for x in value]
  except ValueError:
    raise errors.UserError(f'--{name}={",".join(value)}: comma-separated integers '
                           'expected') from None
  if count is not None and len(out) != count:
    raise errors.UserError(f'--{name} takes {count} integers, got {len(out)}')
  return out


def no_arguments(argv) -> None:
  """Benchmarks take flags only; a stray word is a one-line error, not silently ignored."""
  if argv and len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')


def args_from_flags(**parsed) -> types.SimpleNamespace:
  """The parsed flags as one read-only-by-convention namespace (`args.batch`, ...), with the
  list flags replaced by their checked values `parsed` (names(...), ints(...))."""
  return types.SimpleNamespace(**{**flags.FLAGS.flag_values_dict(), **parsed})


def define_heap() -> None:
  """--heap, for the benchmarks that time XLA:CPU executions (bench.model, bench.train)."""
  flags.DEFINE_enum(
      'heap', 'reuse', ['reuse', 'default'],
      "'reuse': re-run under bench.heap.TUNABLES (one malloc arena, no mmap) so XLA:CPU's "
      'per-execution temporary buffer is not faulted in afresh every run (both '
      "implementations share the setting); 'default': as started. An existing "
      'GLIBC_TUNABLES is always kept.')


def reexec_for_heap(module: str, backend: str) -> None:
  """With --heap reuse on a CPU backend, re-executes `python -m module` (same arguments)
  under bench.heap.TUNABLES - only when this process IS that command: a benchmark run in
  process (tests, `run_with_flags`) must not replace its host process."""
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  if flags.FLAGS.heap == 'reuse' and backend == 'cpu' and getattr(spec, 'name', None) == module:
    heap.reexec_with_reuse(module, sys.argv[1:])


def run_with_flags(module, args: list[str]):
  """Runs benchmark `module`'s main in this process as `python -m module *args` would (no
  re-exec) and returns what it returns. The flags other commands defined in this process
  are set aside for the call and the ones it defined removed afterwards, so benchmarks and
  commands sharing flag names (--out, --repeats, ...) can run one after another in one
  process (a test worker), each with its own defaults."""
  fv = flags.FLAGS

  def ours() -> list[str]:  # Flags this project's commands defined; libraries (absl's
    # logging, grain, array_record, ...) read their own flags and keep them.
    return [n for n in list(fv) if (fv.find_module_defining_flag(n) or '').startswith(
        ('denseav_jax', '__main__'))]

  saved = {n: (fv[n], fv.find_module_defining_flag(n)) for n in ours()}
  for n in saved:
    delattr(fv, n)
  kept = set(fv)
  try:
    module.define_flags()
    argv = fv([module.__name__, *args])
    return module.main(argv)
  finally:
    for n in set(fv) - kept:  # Whatever the call defined, wherever from.
      delattr(fv, n)
    for n, (flag, defined_by) in saved.items():
      fv[n] = flag
      fv.register_flag_by_module(defined_by, flag)  # So a later call sets it aside again.


def write_json(path, entries):
  """Writes `entries` (a list of measurement objects) to `path` atomically; no-op if unset.

  Called after every measurement, so an interrupted run leaves usable output."""
  if not path:
    return
  io_lib.write_json(path, entries)


def print_table(header: str, entries, format_row, out_path=None) -> None:
  """The closing table (one formatted row per entry) and where the JSON went."""
  print(header)
  for e in entries:
    print(format_row(e))
  if out_path:
    print(f'wrote {len(entries)} entries to {out_path}')
  sys.stdout.flush()


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def device_description(device) -> str:
  """'platform:kind', plus the cores and processor for a CPU device."""
  kind = getattr(device, 'device_kind', device.platform)
  desc = f'{device.platform}:{kind}'
  if device.platform == 'cpu':
    desc += f' ({cores()} cores, {platform.processor() or platform.machine()})'
  return desc
