"""Benchmark: the scalable similarity operator beside the dense formulation.

    python -m denseav_jax.bench.similarity [--out results.json]

For every batch size B, head count K and input dtype this measures, for the scalable
operator (`scalable.score_matrix`) and the dense formulation (`dense.scores`, the
whole [B, B, K, H, W, F, T] volume materialised), the NCE loss on the B x B score matrix

    loss(audio, image) = contrastive_loss(score_matrix(audio, mask, image), cal=1, 'nce')

* `fwd_s`:      the jitted loss alone;
* `fwd_bwd_s`:  jax.jit(jax.value_and_grad(loss, argnums=(0, 1))) - the gradient with
                respect to the audio and the image features;
* `peak_bytes`: XLA's static buffer-assignment peak of the compiled fwd+bwd executable, per
                device: argument + output + temp - alias bytes of `memory_analysis()`
                (`fwd_peak_bytes`: the same for the forward alone). Where the device reports
                `memory_stats()` (GPU) the allocator's high-water mark is recorded as well:
                `device_peak_bytes_so_far` (process-wide, never reset) and `device_peak_bytes`
                (that mark when it rose during this measurement - then it is this
                measurement's own peak - else null);
* `flop_efficiency`: the forward's multiply-adds, 2 B^2 C H W F T FLOP (the same for every
                K: the heads split C), divided by fwd_s, divided by the FLOP/s of a jitted
                fp32 matmul (precision HIGHEST, a [N, N] @ [N, N] per device of the mesh,
                N = 4096 or larger, the fastest of 3 runs) measured at the start of the
                same run (it can exceed 1 where the operator's smaller matmuls run faster
                than the big square one, as on small CPUs);
* `speedup_vs_dense`: dense fwd_bwd_s / scalable fwd_bwd_s at the same (B, K, dtype), on
                both rows of the pair.

Timing: every executable is compiled ahead of time (compile time is reported apart, never
timed), run once (warm-up), then `--repeats` timed runs; the reported time is their MEDIAN
(all runs are in `*_times`). When the first run takes longer than `--max_seconds_per_case`,
or the previous batch size's time scaled by (B / B_prev)^2 predicts that it will, that
single first run is the measurement (`*_timing` = 'single', otherwise 'median').

The dense formulation is skipped (an entry with `skipped` set and null numbers) when its
estimated size, B^2 K H W F T x 4 bytes x 4 (volume, temporaries, backward), or the
compiled executable's static peak exceeds `--dense_max_bytes` (default 60% of the device's
memory limit where it reports one, else of the machine's physical RAM), when it runs out
of memory (RESOURCE_EXHAUSTED / MemoryError), and at every larger B once it has not fit.

Runs on a mesh of all local devices (axis 'data'); inputs are sharded over it with
P('data'). Rows are printed as they are measured, and `--out` is rewritten after every
measurement, so a partial run leaves usable output.
"""

import gc
import os
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.losses import contrastive
from denseav_jax.similarity import scalable
from denseav_jax.similarity import dense
from denseav_jax.bench import common as bench_common

IMPLS = ('scalable', 'dense')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DENSE_TEMP_FACTOR = 4  # volume + its temporaries + the backward's, in volume sizes.


# ------------------------------------------------------------------ flags

def define_flags() -> None:
  flags.DEFINE_list('batch_sizes', ['32', '64', '128', '256', '512', '1024'],
                    'B values, comma-separated (each divisible by the device count)')
  flags.DEFINE_list('heads', ['1', '2'], 'K values, comma-separated')
  bench_common.define_names('dtypes', DTYPES, DTYPES, 'input dtypes')
  bench_common.define_names('impls', IMPLS, IMPLS, 'implementations')
  flags.DEFINE_list('block', ['32', '8'], 'scalable operator block: audio rows,images')
  flags.DEFINE_enum('backward', 'argmax', list(scalable.BACKWARDS),
                    'the scalable operator\'s backward')
  flags.DEFINE_enum('collective', 'ring', list(scalable.COLLECTIVES),
                    'the scalable operator\'s collective')
  flags.DEFINE_enum('agg', 'misa', list(dense.VOLUME_AGGREGATORS), 'similarity aggregation')
  flags.DEFINE_integer('repeats', 3, 'timed runs after one warm-up run; the median is '
                       'reported')
  flags.DEFINE_float('max_seconds_per_case', 20.0, 'a run longer than this (or predicted to '
                     'be) is timed once')
  flags.DEFINE_float('dense_max_bytes', None, 'skip dense above this estimated / compiled '
                     'size (default: 60% of the device memory limit, else of physical RAM)')
  flags.DEFINE_string('out', None, 'JSON file: a list, one object per entry')
  flags.DEFINE_integer('seed', 0, 'random seed of the inputs')
  # Problem size (defaults: the release scale; small values for smoke tests).
  flags.DEFINE_integer('channels', 384, 'C')
  flags.DEFINE_integer('grid', 14, 'H = W')
  flags.DEFINE_integer('freq', 1, 'F')
  flags.DEFINE_integer('steps', 56, 'T')
  flags.DEFINE_integer('matmul_size', 0, 'N of the fp32 matmul baseline (0: the best of '
                       '1024, 2048, 4096)')


def parse_flags(argv):
  """The parsed flags, list flags checked and converted."""
  bench_common.no_arguments(argv)
  return bench_common.args_from_flags(
      batch_sizes=bench_common.ints('batch_sizes'), heads=bench_common.ints('heads'),
      dtypes=bench_common.names('dtypes', DTYPES), impls=bench_common.names('impls', IMPLS),
      block=bench_common.ints('block', 2))


# ------------------------------------------------------------------ machine

def physical_memory_bytes():
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _memory_stats(dev):
  try:
    return dev.memory_stats() or None
  except Exception:  # pylint: disable=broad-except
    return None


def default_dense_max_bytes():
  stats = _memory_stats(jax.local_devices()[0])
  limit = stats.get('bytes_limit') if stats else None
  limit = limit or physical_memory_bytes() or 8 * 2 ** 30
  return 0.6 * limit


def device_high_water():
  peaks = [(_memory_stats(d) or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [x for x in peaks if x is not None]
  return max(peaks) if peaks else None


def device_description():
  return (f'{jax.local_device_count()} x '
          f'{bench_common.device_description(jax.local_devices()[0])}')


def make_mesh():
  n = jax.local_device_count()
  return jax.make_mesh((n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.local_devices())


def _run_once(fn, args):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def matmul_flops_per_s(mesh, size=0, repeats=3):
  """The machine's fp32 (HIGHEST) matmul FLOP/s: [N, N] @ [N, N] on every device.

  N = `size`, or (size=0) the best of N = 1024, 2048, 4096 (XLA CPU's rate depends on N;
  the best one is the machine's matmul peak). One warm-up run, then `repeats` timed runs;
  the FASTEST gives the FLOP/s. Returns (flop/s, N, seconds of that run).
  """
  n_dev = mesh.devices.size
  sharding = NamedSharding(mesh, P('data'))
  f = jax.jit(lambda a, b: jnp.einsum('dij,djk->dik', a, b,
                                      precision=jax.lax.Precision.HIGHEST))
  rng = np.random.default_rng(0)
  best = (0.0, 0, 0.0)
  for n in ([size] if size else [1024, 2048, 4096]):
    a = jax.device_put(rng.standard_normal((n_dev, n, n), np.float32), sharding)
    b = jax.device_put(rng.standard_normal((n_dev, n, n), np.float32), sharding)
    c = f.lower(a, b).compile()
    _run_once(c, (a, b))  # warm-up
    t = min(_run_once(c, (a, b)) for _ in range(max(repeats, 1)))
    rate = 2.0 * n ** 3 * n_dev / t
    if rate > best[0]:
      best = (rate, n, t)
  return best


# ------------------------------------------------------------------ one case

def make_inputs(b, c, f, t, h, w, dtype, seed, mesh):
  """Random normal features (scaled so dot products are ~N(0, 1)) and a random mask:
  about half the rows full length, the rest a random valid length in [1, T]."""
  rng = np.random.default_rng(seed)
  scale = c ** -0.25
  audio = rng.standard_normal((b, f, t, c), np.float32) * scale
  image = rng.standard_normal((b, h, w, c), np.float32) * scale
  lengths = np.where(rng.random(b) < 0.5, t, rng.integers(1, t + 1, size=b))
  mask = np.arange(t)[None, :] < lengths[:, None]
  sharding = NamedSharding(mesh, P('data'))
  put = lambda x: jax.device_put(x, sharding)
  return put(audio.astype(dtype)), put(image.astype(dtype)), put(mask)


def make_loss(impl, mesh, args, num_heads):
  if impl == 'scalable':
    def sim(audio, mask, image):
      return scalable.score_matrix(
          audio, mask, image, mesh=mesh, batch_axes=('data',), num_heads=num_heads,
          agg=args.agg, head_agg='max_elementwise', block=tuple(args.block),
          backward=args.backward, collective=args.collective)
  else:
    def sim(audio, mask, image):
      return dense.scores(audio, mask, image, num_heads=num_heads, agg=args.agg,
                               head_agg='max_elementwise')

  def loss(audio, image, mask):
    return contrastive.contrastive_loss(sim(audio, mask, image), 1.0, 'nce')
  return loss


def peak_bytes(compiled):
  """XLA's static buffer-assignment peak (per device): args + outputs + temps - aliased."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _compile(fn, args):
  t0 = time.perf_counter()
  c = jax.jit(fn).lower(*args).compile()
  return c, time.perf_counter() - t0


def time_compiled(compiled, args, repeats, max_seconds, expected):
  """(seconds, all run times, 'median' | 'single'): see the module docstring."""
  first = _run_once(compiled, args)
  if first > max_seconds or (expected is not None and expected > max_seconds) or repeats < 1:
    return first, [first], 'single'
  times = [_run_once(compiled, args) for _ in range(repeats)]
  return statistics.median(times), times, 'median'


def is_oom(e):
  if isinstance(e, MemoryError):
    return True
  msg = str(e)
  return ('RESOURCE_EXHAUSTED' in msg or 'out of memory' in msg.lower()
          or 'Out of memory' in msg)


class SkipCase(Exception):
  pass


def _expected(history, key, b):
  prev = history.get(key)
  return None if prev is None else prev[1] * (b / prev[0]) ** 2


def run_case(impl, b, k, dtype_name, args, mesh, common, history, dense_max_bytes):
  """Measures one (impl, B, K, dtype); returns its entry (raises SkipCase(reason))."""
  c, h, f, t = args.channels, args.grid, args.freq, args.steps
  if impl == 'dense':
    est = b * b * k * h * h * f * t * 4 * DENSE_TEMP_FACTOR
    if est > dense_max_bytes:
      raise SkipCase(f'estimated {est / 2**30:.1f} GiB > --dense_max_bytes '
                     f'{dense_max_bytes / 2**30:.1f} GiB')
  inputs = make_inputs(b, c, f, t, h, h, DTYPES[dtype_name], args.seed + b, mesh)
  loss = make_loss(impl, mesh, args, k)
  high_water0 = device_high_water()
  entry = dict(impl=impl, B=b, K=k, dtype=dtype_name)
  # fwd+bwd first: its static peak decides whether dense is run at all.
  fb, entry['compile_fwd_bwd_s'] = _compile(jax.value_and_grad(loss, argnums=(0, 1)), inputs)
  entry['peak_bytes'] = peak_bytes(fb)
  if impl == 'dense' and entry['peak_bytes'] and entry['peak_bytes'] > dense_max_bytes:
    raise SkipCase(f'compiled peak {entry["peak_bytes"] / 2**30:.1f} GiB > --dense_max_bytes '
                   f'{dense_max_bytes / 2**30:.1f} GiB')
  fw, entry['compile_fwd_s'] = _compile(loss, inputs)
  entry['fwd_peak_bytes'] = peak_bytes(fw)
  for name, compiled in (('fwd', fw), ('fwd_bwd', fb)):
    key = (impl, k, dtype_name, name)
    s, times, how = time_compiled(compiled, inputs, args.repeats, args.max_seconds_per_case,
                                  _expected(history, key, b))
    history[key] = (b, s)
    entry[f'{name}_s'], entry[f'{name}_times'], entry[f'{name}_timing'] = s, times, how
  high_water1 = device_high_water()
  if high_water1 is not None:
    entry['device_peak_bytes_so_far'] = high_water1
    rose = high_water0 is None or high_water1 > high_water0
    entry['device_peak_bytes'] = high_water1 if rose else None
  flops = 2.0 * b * b * c * h * h * f * t
  entry['fwd_flops'] = flops
  entry['achieved_flops_per_s'] = flops / entry['fwd_s']
  entry['flop_efficiency'] = entry['achieved_flops_per_s'] / common['matmul_flops_per_s']
  if impl == 'dense':
    entry['est_dense_bytes'] = b * b * k * h * h * f * t * 4 * DENSE_TEMP_FACTOR
  entry.update(common)
  return entry


# ------------------------------------------------------------------ output

HEADER = (f'{"impl":<9} {"B":>5} {"K":>2} {"dtype":<9} {"fwd_s":>9} {"fwd_bwd_s":>10} '
          f'{"peak_MiB":>10} {"flop_eff":>9} {"speedup":>8}')


def format_row(e):
  head = f'{e["impl"]:<9} {e["B"]:>5} {e["K"]:>2} {e["dtype"]:<9} '
  if e.get('skipped'):
    return head + f'skipped: {e["skipped"]}'
  peak = '-' if e.get('peak_bytes') is None else f'{e["peak_bytes"] / 2**20:.1f}'
  sp = e.get('speedup_vs_dense')
  sp = '-' if sp is None else f'{sp:.2f}x'
  timing = '' if e['fwd_bwd_timing'] == 'median' and e['fwd_timing'] == 'median' else ' (1 run)'
  return (head + f'{e["fwd_s"]:>9.4f} {e["fwd_bwd_s"]:>10.4f} {peak:>10} '
          f'{e["flop_efficiency"]:>9.4f} {sp:>8}{timing}')


def _pair_speedup(entries, e):
  """Sets speedup_vs_dense on e and its partner (the other impl at the same B, K, dtype)."""
  other = 'scalable' if e['impl'] == 'dense' else 'dense'
  for x in entries:
    if (x['impl'] == other and x['B'] == e['B'] and x['K'] == e['K']
        and x['dtype'] == e['dtype'] and not x.get('skipped') and not e.get('skipped')):
      dense, scal = (e, x) if e['impl'] == 'dense' else (x, e)
      sp = dense['fwd_bwd_s'] / scal['fwd_bwd_s']
      dense['speedup_vs_dense'] = scal['speedup_vs_dense'] = sp


def main(argv):
  args = parse_flags(argv)
  mesh = make_mesh()
  n_dev = mesh.devices.size
  bad = [b for b in args.batch_sizes if b % n_dev]
  if bad:
    raise errors.UserError(f'batch sizes {bad} are not divisible by the {n_dev} devices')
  dense_max_bytes = args.dense_max_bytes or default_dense_max_bytes()
  mm_flops, mm_n, mm_t = matmul_flops_per_s(mesh, args.matmul_size)
  device = device_description()
  print(f'device: {device}; jax {jax.__version__}', flush=True)
  print(f'fp32 matmul baseline: {n_dev} x [{mm_n}, {mm_n}] @ [{mm_n}, {mm_n}] in '
        f'{mm_t:.4f} s (fastest of 3) = {mm_flops / 1e9:.1f} GFLOP/s', flush=True)
  print(f'C={args.channels} H=W={args.grid} F={args.freq} T={args.steps} agg={args.agg} '
        f'block={tuple(args.block)} backward={args.backward} collective={args.collective}; '
        f'times: median of {args.repeats} after a warm-up ("(1 run)": a single run); '
        f'peak: XLA static peak of fwd+bwd per device; flop_eff: forward FLOP/s / matmul '
        f'FLOP/s; speedup: dense / scalable fwd_bwd; dense skipped above '
        f'{dense_max_bytes / 2**30:.1f} GiB', flush=True)
  print(HEADER, flush=True)
  common = dict(matmul_flops_per_s=mm_flops, matmul_size=mm_n, device=device,
                n_devices=n_dev, C=args.channels, H=args.grid, W=args.grid, F=args.freq,
                T=args.steps, agg=args.agg, block=list(args.block), backward=args.backward,
                collective=args.collective, repeats=args.repeats, jax_version=jax.__version__)
  entries, history, no_fit = [], {}, {}
  for b in args.batch_sizes:
    for k in args.heads:
      for dt in args.dtypes:
        for impl in args.impls:
          key = (impl, k, dt)
          try:
            if key in no_fit:
              raise SkipCase(f'did not fit at B={no_fit[key]}')
            e = run_case(impl, b, k, dt, args, mesh, common, history, dense_max_bytes)
            e['skipped'] = None
          except SkipCase as s:
            e = dict(impl=impl, B=b, K=k, dtype=dt, skipped=str(s))
            no_fit.setdefault(key, b)
          except Exception as exc:  # pylint: disable=broad-except
            if not is_oom(exc):
              raise
            e = dict(impl=impl, B=b, K=k, dtype=dt,
                     skipped=f'out of memory: {str(exc).splitlines()[0][:200]}')
            no_fit.setdefault(key, b)
          if e.get('skipped'):
            e.update(fwd_s=None, fwd_bwd_s=None, peak_bytes=None, flop_efficiency=None)
            e.update(common)
          e.setdefault('speedup_vs_dense', None)
          entries.append(e)
          _pair_speedup(entries, e)
          print(format_row(e), flush=True)
          bench_common.write_json(args.out, entries)
          gc.collect()
  print('\nall rows (speedup on both rows of each pair):', flush=True)
  bench_common.print_table(HEADER, entries, format_row, args.out)
  return entries


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
