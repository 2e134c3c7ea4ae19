"""glibc heap settings under which XLA:CPU reuses its temporary buffer between executions.

XLA's CPU runtime allocates an executable's whole temporary buffer with malloc on every
execution (2.1 GB for HuBERT-Large's conv front end forward+backward at batch 2, ~3.5 GB
for the whole tower) from one of its worker threads. glibc serves a request that large
with a fresh mmap (thread arenas mmap big blocks even when mmap is capped), and frees it
with munmap, so every execution faults every page in again: ~0.6 M minor page faults and
~3-4 s of system time per front-end step on the 2-core development VM.

With one arena, mmap disabled and trimming effectively off, the block comes from the brk
heap and stays mapped after free, so the next execution reuses it (0 faults, measured:
front-end fwd+bwd 3.06 s -> 2.37 s). torch in the same process benefits alike. The cost:
freed memory is not returned to the OS, and all threads share one malloc arena.

glibc reads GLIBC_TUNABLES at process start only, so `reexec_with_reuse` re-executes the
current command with it set (once; an existing GLIBC_TUNABLES is left alone). For your
own CPU runs of the full-size towers: `export GLIBC_TUNABLES=` + `TUNABLES`.
"""

import os
import sys

from absl import flags

from denseav_jax import cli
from denseav_jax import errors

TUNABLES = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
            'glibc.malloc.trim_threshold=68719476736')
_MARK = 'DENSEAV_JAX_HEAP_REEXEC'


def active() -> str:
  """The GLIBC_TUNABLES this process started with ('' if none)."""
  return os.environ.get('GLIBC_TUNABLES', '')


def reexec_with_reuse(module: str, argv: list[str]) -> None:
  """Re-runs `python -m module *argv` with TUNABLES unless GLIBC_TUNABLES is already set
  (or this is already the re-executed process, or the platform is not Linux)."""
  if not sys.platform.startswith('linux') or active() or os.environ.get(_MARK):
    return
  env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, **{_MARK: '1'})
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, '-m', module, *argv], env)


def define_flags() -> None:
  flags.DEFINE_boolean('active', False, 'print the GLIBC_TUNABLES this process started with '
                       '(empty if none) instead of TUNABLES')


def main(argv):
  """`export GLIBC_TUNABLES=$(python -m denseav_jax.bench.heap)` for your own CPU runs."""
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  print(active() if flags.FLAGS.active else TUNABLES)


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
