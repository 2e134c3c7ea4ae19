"""Benchmark: the full-size JAX towers beside their PyTorch references, same weights.

    python -m denseav_jax.bench.model [--towers image,audio] [--out results.json]

Towers (docs/models.md#full-size), batch `--batch` (2):
* image: DINO ViT-S/8 (patch 8, width 384, depth 12, 6 heads, LayerNorm eps 1e-4) on
  224 x 224 images -> dense [B, 28, 28, 384] (+ CLS). Torch: `torch_models.DinoViT`.
* audio: HuBERT-Large (layer-norm conv front end with bias, 24 pre-norm layers, width 1024,
  16 heads, FFN 4096, positional conv kernel 128 / 16 groups, eps 1e-4) on 164,200-sample
  (10.26 s) clips -> dense [B, 512, 1024]. Torch: `torch_models.hubert('large')`
  (Hugging Face HubertModel, its default attention implementation).

The torch model is built with random weights and converted into our parameter tree with
`denseav_jax.conversion.dino.tower_params` / `hubert.tower_params`, so both sides compute
the same function; the forward outputs are compared (max |jax - torch|, printed and in
`max_abs_diff`).

Passes, for each implementation:
* `fwd`:     the tower's outputs (JAX: jitted `apply`; torch: eval mode, inference_mode);
* `fwd_bwd`: the gradient of loss = mean(dense ** 2) with respect to every parameter
             (JAX: jitted value_and_grad, train=True; torch: train mode - every dropout is
             0 - and loss.backward() into requires_grad parameters).

Timing: fp32 on both sides with the same threads (torch.set_num_threads(cores); XLA's CPU
client uses every core). JAX executables are compiled ahead of time (`compile_s`, never
timed); each implementation then runs once as a warm-up (`warmup_s`) and `--repeats` timed
runs, the implementations INTERLEAVED run by run (jax, torch, jax, torch, ...) so that
load from other processes hits both alike. The reported time is the BEST run (`seconds`;
all runs in `times`, their median in `median_s`); examples_per_s = batch / seconds, and
`jax_over_torch` = JAX examples_per_s / torch examples_per_s at the same tower, pass and
dtype (on both rows). `sys_s` and `page_faults` are the system CPU time and minor page
faults of the process during the best run (getrusage): XLA's CPU runtime mallocs its whole
temporary buffer (~0.8 GB for the ViT's fwd_bwd, ~3.5 GB for HuBERT's) on every execution,
which glibc maps afresh each time unless the process runs with `bench.heap.TUNABLES`;
`--heap reuse` (default) re-executes the benchmark with them (0 faults; torch in the same
process gets the same allocator), `--heap default` measures as started. `--dtypes bfloat16` runs the JAX towers with bf16 compute (fp32
parameters; meant for GPU); torch runs fp32 only. `--small` shrinks every tower (depth 2,
narrow, 32 x 32 images, 4,000-sample clips) for smoke tests.

`--out` is rewritten after every measurement, so a partial run leaves usable output.
"""

import gc
import platform
import resource
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.bench import common as bench_common
from denseav_jax.bench import heap
from denseav_jax.models import audio as audio_lib
from denseav_jax.models import image as image_lib

TOWERS = ('image', 'audio')
PASSES = ('fwd', 'fwd_bwd')
IMPLS = ('jax', 'torch')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Full-size shapes (docs/models.md#full-size) and the --small ones.
IMAGE_SHAPES = {
    'full': dict(patch_size=8, width=384, depth=12, num_heads=6, image_size=224),
    'small': dict(patch_size=8, width=64, depth=2, num_heads=2, image_size=32),
}
AUDIO_SHAPES = {
    'full': dict(samples=164200, conv_channels=512, width=1024, depth=24, num_heads=16,
                 mlp_dim=4096, pos_conv_kernel=128, pos_conv_groups=16),
    'small': dict(samples=4000, conv_channels=32, width=64, depth=2, num_heads=4, mlp_dim=128,
                  pos_conv_kernel=128, pos_conv_groups=16),
}
LN_EPS = 1e-4  # DenseAV's override of every tower LayerNorm (not HuBERT's conv front end).


# ------------------------------------------------------------------ flags

def define_flags() -> None:
  bench_common.define_names('towers', TOWERS, TOWERS, 'towers')
  bench_common.define_names('passes', PASSES, PASSES, 'passes')
  bench_common.define_names('impls', IMPLS, IMPLS, 'implementations')
  bench_common.define_names('dtypes', DTYPES, ['float32'], 'JAX compute dtypes (bfloat16: '
                            'meant for GPU); torch runs float32')
  flags.DEFINE_integer('batch', 2, 'examples per run')
  flags.DEFINE_integer('repeats', 5, 'timed runs per implementation after one warm-up; the '
                       'best is reported')
  flags.DEFINE_integer('threads', 0, 'torch threads (0: the cores this process may use)')
  flags.DEFINE_boolean('small', False, 'tiny towers (depth 2, narrow, short inputs) for '
                       'smoke tests')
  flags.DEFINE_integer('seed', 0, 'random seed of the weights and inputs')
  bench_common.define_heap()
  flags.DEFINE_string('out', None, 'JSON file: a list, one object per measurement')


def parse_flags(argv):
  """The parsed flags, list flags checked, sizes validated."""
  bench_common.no_arguments(argv)
  args = bench_common.args_from_flags(
      towers=bench_common.names('towers', TOWERS),
      passes=bench_common.names('passes', PASSES),
      impls=bench_common.names('impls', IMPLS), dtypes=bench_common.names('dtypes', DTYPES))
  if args.batch < 1 or args.repeats < 1:
    raise errors.UserError('--batch and --repeats must be positive')
  return args


# ------------------------------------------------------------------ machine

def jax_device_description():
  return f'jax {bench_common.device_description(jax.devices()[0])}'


def torch_device_description(torch):
  return (f'torch cpu ({torch.get_num_threads()} threads, '
          f'{platform.processor() or platform.machine()})')


# ------------------------------------------------------------------ towers

class Tower:
  """One tower on both sides: the JAX module, its converted parameters, the torch module
  and one batch of inputs in each layout; `jax_dense` / `torch_dense` pick the dense map
  [B, ..., D] (channels last) out of each model's outputs."""

  def __init__(self, name, small, batch, seed):
    torch = bench_common.require('torch', 'the PyTorch reference towers')
    from denseav_jax.conversion import dino  # pylint: disable=g-import-not-at-top
    from denseav_jax.conversion import hubert  # pylint: disable=g-import-not-at-top
    from denseav_jax.testing import torch_models  # pylint: disable=g-import-not-at-top
    self.name = name
    size = 'small' if small else 'full'
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if name == 'image':
      s = IMAGE_SHAPES[size]
      self.shape = dict(s)
      self.torch_model = torch_models.DinoViT(
          patch_size=s['patch_size'], width=s['width'], depth=s['depth'],
          num_heads=s['num_heads'], eps=LN_EPS, img_size=s['image_size'])
      with torch.no_grad():  # DINO starts these at zero; random makes the check meaningful.
        torch.nn.init.trunc_normal_(self.torch_model.cls_token, std=0.02)
        torch.nn.init.trunc_normal_(self.torch_model.pos_embed, std=0.02)
      self.convert = dino.tower_params
      self.modules = {dt: image_lib.ImageTower(
          patch_size=s['patch_size'], width=s['width'], depth=s['depth'],
          num_heads=s['num_heads'], ln_eps=LN_EPS, pos_grid=s['image_size'] // s['patch_size'],
          dtype=DTYPES[dt]) for dt in DTYPES}
      x = rng.standard_normal((batch, 3, s['image_size'], s['image_size']), np.float32)
      self.torch_input = torch.from_numpy(x)
      self.jax_input = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC
      self.jax_dense = lambda out: out[0]
      self.torch_dense = lambda out: out[0].permute(0, 2, 3, 1)
    elif name == 'audio':
      s = AUDIO_SHAPES[size]
      self.shape = dict(s)
      self.torch_model = torch_models.hubert(
          'large', num_layers=s['depth'], eps=LN_EPS, hidden_size=s['width'],
          num_attention_heads=s['num_heads'], intermediate_size=s['mlp_dim'],
          conv_dim=(s['conv_channels'],) * 7, num_conv_pos_embeddings=s['pos_conv_kernel'],
          num_conv_pos_embedding_groups=s['pos_conv_groups'])
      self.convert = hubert.tower_params
      variant = dict(audio_lib.HUBERT_VARIANTS['hubert_large'])
      variant.update(conv_channels=s['conv_channels'], width=s['width'], depth=s['depth'],
                     num_heads=s['num_heads'], mlp_dim=s['mlp_dim'],
                     pos_conv_kernel=s['pos_conv_kernel'],
                     pos_conv_groups=s['pos_conv_groups'])
      self.modules = {dt: audio_lib.AudioTower(**variant, ln_eps=LN_EPS, dtype=DTYPES[dt])
                      for dt in DTYPES}
      x = rng.standard_normal((batch, s['samples']), np.float32)
      x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
      self.torch_input = torch.from_numpy(x)
      self.jax_input = x
      self.jax_dense = lambda out: out[:, 0]  # [B, 1, T, D] -> [B, T, D]
      self.torch_dense = lambda out: out.last_hidden_state
      self.shape['attn_implementation'] = getattr(self.torch_model.config,
                                                  '_attn_implementation', None)
    else:
      raise ValueError(name)
    self.torch_model.eval()
    self.n_params = int(sum(p.numel() for p in self.torch_model.parameters()))
    self.params = self._jax_params()

  def _jax_params(self):
    """The torch weights in our tree; checked leaf by leaf against the module's shapes."""
    sd = {k: v.detach().clone() for k, v in self.torch_model.state_dict().items()}
    tree = self.convert(sd)
    tree = tree.get('params', tree) if isinstance(tree, dict) else tree
    module = self.modules['float32']
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), self.jax_input))['params']
    shapes = jax.tree.map(lambda s: s.shape, _unbox(shapes))
    got = jax.tree.map(lambda a: tuple(np.shape(a)), tree)
    if got != shapes:
      raise ValueError(f'{self.name}: converted parameters do not match the JAX tower: '
                       f'{_tree_diff(got, shapes)}')
    dev = jax.devices()[0]
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float32), dev), tree)


def _unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.meta.unbox(tree)


def _tree_diff(a, b):
  fa = dict(jax.tree_util.tree_flatten_with_path(a, is_leaf=lambda x: isinstance(x, tuple))[0])
  fb = dict(jax.tree_util.tree_flatten_with_path(b, is_leaf=lambda x: isinstance(x, tuple))[0])
  out = [f'{jax.tree_util.keystr(k)}: {fa.get(k)} vs {fb.get(k)}'
         for k in sorted(set(fa) | set(fb), key=str) if fa.get(k) != fb.get(k)]
  return '; '.join(out[:8])


# ------------------------------------------------------------------ runners

def _timed(fn):
  """(wall seconds, system CPU seconds, minor page faults) of one call."""
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  t0 = time.perf_counter()
  fn()
  t1 = time.perf_counter()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def jax_runner(tower, pass_name, dtype):
  """(run() -> None, compile seconds, extra info) for one JAX executable."""
  module = tower.modules[dtype]
  dev = jax.devices()[0]
  x = jax.device_put(tower.jax_input, dev)
  if pass_name == 'fwd':
    def fn(params, x):
      return module.apply({'params': params}, x)
  else:
    def loss(params, x):
      dense = tower.jax_dense(module.apply({'params': params}, x, train=True))
      return jnp.mean(jnp.square(dense.astype(jnp.float32)))
    fn = jax.value_and_grad(loss)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(tower.params, x).compile()
  compile_s = time.perf_counter() - t0
  info = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    info['xla_flops'] = float(cost.get('flops')) if cost and cost.get('flops') else None
  except Exception:  # pylint: disable=broad-except
    info['xla_flops'] = None
  state = {}

  def run():
    state.pop('out', None)  # Free the previous results first (torch: p.grad = None).
    state['out'] = compiled(tower.params, x)
    jax.block_until_ready(state['out'])
  return run, compile_s, info, state


def torch_runner(tower, pass_name):
  torch = bench_common.require('torch', 'the PyTorch reference towers')
  model, x = tower.torch_model, tower.torch_input
  params = [p for p in model.parameters()]
  state = {}
  if pass_name == 'fwd':
    def run():
      model.eval()
      state.pop('out', None)
      with torch.inference_mode():
        state['out'] = model(x)
  else:
    def run():
      model.train()
      for p in params:
        p.grad = None
      loss = tower.torch_dense(model(x)).pow(2).mean()
      loss.backward()
      state['out'] = float(loss.detach())
  return run, state


# ------------------------------------------------------------------ output

HEADER = (f'{"tower":<6} {"pass":<8} {"dtype":<9} {"impl":<6} {"ex/s":>9} {"best_s":>9} '
          f'{"median_s":>9} {"sys_s":>6} {"faults":>8} {"compile_s":>9} {"jax/torch":>9} '
          f'{"max|diff|":>10}')


def format_row(e):
  ratio = e.get('jax_over_torch')
  ratio = '-' if ratio is None else f'{ratio:.2f}x'
  diff = e.get('max_abs_diff')
  diff = '-' if diff is None else f'{diff:.2e}'
  comp = e.get('compile_s')
  comp = '-' if comp is None else f'{comp:.1f}'
  return (f'{e["tower"]:<6} {e["pass"]:<8} {e["dtype"]:<9} {e["impl"]:<6} '
          f'{e["examples_per_s"]:>9.3f} {e["seconds"]:>9.4f} {e["median_s"]:>9.4f} '
          f'{e["sys_s"]:>6.2f} {e["page_faults"]:>8d} {comp:>9} {ratio:>9} {diff:>10}')


def _set_ratios(entries):
  for e in entries:
    if e['impl'] != 'jax':
      continue
    for t in entries:
      if (t['impl'] == 'torch' and t['tower'] == e['tower'] and t['pass'] == e['pass']
          and t['dtype'] == 'float32'):
        r = e['examples_per_s'] / t['examples_per_s']
        e['jax_over_torch'] = r
        if e['dtype'] == 'float32':
          t['jax_over_torch'] = r


# ------------------------------------------------------------------ main

def measure_tower(name, args, common, entries):
  torch = bench_common.require('torch', 'the PyTorch reference towers')
  t0 = time.perf_counter()
  tower = Tower(name, args.small, args.batch, args.seed)
  setup_s = time.perf_counter() - t0
  print(f'\n{name}: {tower.shape}, {tower.n_params / 1e6:.1f} M parameters, input '
        f'{tuple(tower.jax_input.shape)} (set-up and conversion {setup_s:.1f} s)', flush=True)
  jax_dtypes = list(args.dtypes) if 'jax' in args.impls else []
  torch_on = 'torch' in args.impls and 'float32' in args.dtypes
  torch_ref = None  # torch's fp32 forward dense map, for the agreement check.
  diffs = {}
  for pass_name in args.passes:
    runners = []  # (impl, dtype, run, compile_s, info, state)
    for dt in jax_dtypes:
      run, compile_s, info, state = jax_runner(tower, pass_name, dt)
      runners.append(('jax', dt, run, compile_s, info, state))
    if torch_on:
      run, state = torch_runner(tower, pass_name)
      runners.append(('torch', 'float32', run, None, {}, state))
    warm = {}
    for impl, dt, run, *_ in runners:
      warm[(impl, dt)] = _timed(run)[0]
    # Agreement: forward outputs (fwd) / loss values (fwd_bwd), each jax dtype vs torch fp32.
    if torch_on and pass_name == 'fwd':
      torch_ref = tower.torch_dense(runners[-1][5]['out']).detach().numpy()
    loss_ref = runners[-1][5]['out'] if torch_on and pass_name == 'fwd_bwd' else None
    for impl, dt, _, _, _, state in runners:
      if impl != 'jax':
        continue
      if pass_name == 'fwd' and torch_ref is not None:
        got = np.asarray(tower.jax_dense(state['out']), np.float32)
        diffs[dt] = dict(max_abs_diff=float(np.max(np.abs(got - torch_ref))),
                         max_abs_ref=float(np.max(np.abs(torch_ref))))
        print(f'{name} {dt}: forward dense {got.shape}: max |jax - torch| = '
              f'{diffs[dt]["max_abs_diff"]:.3e} (max |torch| = '
              f'{diffs[dt]["max_abs_ref"]:.3f})', flush=True)
      if pass_name == 'fwd_bwd' and loss_ref is not None:
        got = float(state['out'][0])
        print(f'{name} {dt}: loss jax {got:.6f} torch {loss_ref:.6f} '
              f'(rel diff {abs(got - loss_ref) / max(abs(loss_ref), 1e-12):.2e})', flush=True)
        diffs.setdefault(dt, {})['loss_rel_diff'] = abs(got - loss_ref) / max(abs(loss_ref),
                                                                             1e-12)
    times = {(impl, dt): [] for impl, dt, *_ in runners}
    for _ in range(args.repeats):  # Interleaved: one run of each implementation per round.
      for impl, dt, run, *_ in runners:
        times[(impl, dt)].append(_timed(run))
    for impl, dt, _, compile_s, info, _ in runners:
      runs = times[(impl, dt)]
      ts = [r[0] for r in runs]
      i_best = int(np.argmin(ts))
      best = ts[i_best]
      e = dict(tower=name, impl=impl, dtype=dt, batch=args.batch, examples_per_s=args.batch / best,
               seconds=best, median_s=statistics.median(ts), times=ts, warmup_s=warm[(impl, dt)],
               sys_s=runs[i_best][1], page_faults=runs[i_best][2],
               compile_s=compile_s, device=(common['jax_device'] if impl == 'jax'
                                            else torch_device_description(torch)),
               n_params=tower.n_params, shape=tower.shape, small=args.small,
               glibc_tunables=common['glibc_tunables'], jax_over_torch=None)
      e['pass'] = pass_name
      e.update(info)
      if impl == 'jax':
        e.update(diffs.get(dt, {}))
      else:
        e['torch_version'] = torch.__version__
      e.update(common)
      entries.append(e)
      _set_ratios(entries)
      print(format_row(e), flush=True)
      bench_common.write_json(args.out, entries)
    del runners
    gc.collect()
  del tower
  gc.collect()


def main(argv):
  """Runs the benchmark (as the command, --heap reuse first restarts the process)."""
  args = parse_flags(argv)
  bench_common.reexec_for_heap('denseav_jax.bench.model', jax.default_backend())
  torch = bench_common.require('torch', 'python -m denseav_jax.bench.model (the PyTorch '
                               'reference towers)')
  threads = args.threads or bench_common.cores()
  torch.set_num_threads(threads)
  common = dict(jax_device=jax_device_description(), threads=threads, repeats=args.repeats,
                jax_version=jax.__version__, glibc_tunables=heap.active())
  print(f'{common["jax_device"]}; {torch_device_description(torch)}; jax {jax.__version__}, '
        f'torch {torch.__version__}; batch {args.batch}; best of {args.repeats} interleaved '
        f'runs after a warm-up; compile time apart{"; SMALL towers" if args.small else ""}; '
        f'GLIBC_TUNABLES={heap.active() or "(unset)"}', flush=True)
  entries = []
  for name in args.towers:
    measure_tower(name, args, common, entries)
  print('\nexamples/s = batch / best time; jax/torch = ratio of examples/s at the same '
        'tower, pass (and fp32 torch); sys_s / faults = system CPU seconds / minor page '
        'faults during the best run; max|diff| = max |jax - torch| of the forward dense '
        'map', flush=True)
  bench_common.print_table(HEADER, entries, format_row, args.out)
  return entries


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
