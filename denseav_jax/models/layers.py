"""Transformer building blocks shared by the image tower, audio tower and aligners.

Layouts follow the PyTorch models we import (DINO/timm: fused `qkv`; HuBERT: separate
q/k/v), but activations are channels-last: tokens are [B, N, D]. Every parameter carries
logical axis names (see `partitioning`), every matmul runs in the module's `dtype`
(bf16 compute with fp32 parameters when `dtype=jnp.bfloat16`), and any `Linear` whose
name is in `LoraSpec.targets` gets a low-rank update (LoRA).
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.parallel.partitioning import constrain

# Trained-from-scratch towers use DINO's init; pretrained ones are loaded from checkpoints.
dense_init = nn.initializers.truncated_normal(0.02)
Dtype = Any


def gelu(x):
  """The exact (erf) GELU of DINO and HuBERT, written as torch computes it:
  x / 2 * (1 + erf(x / sqrt 2)). (jax.nn.gelu's erfc form is the same function, but XLA's
  CPU erfc and its gradient cost about twice as much.)"""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


def with_axes(init: Callable, names: Sequence[str | None]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(names))


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Low-rank adapters: y = x W + b + dropout(x) A B * alpha / rank on `targets`.

  A [in, rank] is random (PyTorch-Linear-style uniform, as peft), B [rank, out] zero, so a
  fresh adapter leaves the model unchanged. Targets are module names ('qkv' in DINO;
  'q_proj', 'k_proj', 'v_proj' in HuBERT; any Linear of a tower may be named).
  """
  rank: int = 0
  alpha: float = 32.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ()

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def on(self, name: str) -> 'LoraSpec | None':
    return self if self.rank > 0 and name in self.targets else None

  @classmethod
  def from_config(cls, cfg) -> 'LoraSpec | None':
    """The spec of a tower's `lora` config section; None when its rank is 0 (off)."""
    if not int(cfg.rank):
      return None
    return cls(rank=int(cfg.rank), alpha=float(cfg.alpha), dropout=float(cfg.dropout),
               targets=tuple(cfg.targets))


class Linear(nn.Module):
  """nn.Dense with logical axes, compute dtype and optional LoRA (params kernel, bias,
  lora_a, lora_b)."""
  features: int
  axes: tuple[str | None, str | None] = ('embed', 'mlp')
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  lora: LoraSpec | None = None
  kernel_init: Callable = dense_init

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    kernel = self.param('kernel', with_axes(self.kernel_init, self.axes), (cin, self.features))
    matmul = cpu_matmul if on_cpu() else jnp.matmul
    y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', with_axes(nn.initializers.zeros, self.axes[1:]),
                        (self.features,))
      y = y + bias.astype(self.dtype)
    if self.lora is not None:
      r = self.lora.rank
      a = self.param('lora_a', with_axes(_uniform_fan_in(cin), (self.axes[0], None)), (cin, r))
      b = self.param('lora_b', with_axes(nn.initializers.zeros, (None, self.axes[1])),
                     (r, self.features))
      h = nn.Dropout(self.lora.dropout, deterministic=not train)(x.astype(self.dtype))
      y = y + (h @ a.astype(self.dtype)) @ (b * self.lora.scale).astype(self.dtype)
    return y


@jax.custom_vjp
def cpu_matmul(x, kernel):
  """x [..., in] @ kernel [in, out] (= jnp.matmul), whose kernel gradient x^T dy is
  computed from an explicit transposed copy of x when in <= out.

  That gradient contracts both operands over their major (token) axis, a layout XLA's CPU
  dot runs at about half speed when in < out (87 vs 168 GFLOP/s for HuBERT's 1024 -> 4096
  FFN kernel, 16 vs 11 ms for DINO's 384 -> 1536); copying x^T first costs a fraction of
  that. The barrier keeps XLA from folding the copy back into the dot.
  """
  return x @ kernel


def _cpu_matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _cpu_matmul_bwd(res, dy):
  x, kernel = res
  cin, cout = kernel.shape
  dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
  x2, dy2 = x.reshape(-1, cin), dy.reshape(-1, cout)
  x2t = jax.lax.optimization_barrier(x2.T) if cin <= cout else x2.T
  return dx, (x2t @ dy2).astype(kernel.dtype)


cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def _uniform_fan_in(fan_in: int) -> Callable:
  """torch.nn.Linear's default weight init (kaiming_uniform a=sqrt(5)): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def LayerNorm(eps: float, dtype: Dtype = jnp.float32, axis_name: str | None = 'embed',
              name: str | None = None) -> nn.LayerNorm:  # pylint: disable=invalid-name
  """nn.LayerNorm (statistics in fp32) whose scale/bias carry a logical axis."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=with_axes(nn.initializers.ones, (axis_name,)),
                      bias_init=with_axes(nn.initializers.zeros, (axis_name,)), name=name)


class Mlp(nn.Module):
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  lora: LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    lora = self.lora or LoraSpec()
    x = Linear(self.hidden, ('embed', 'mlp'), dtype=self.dtype, lora=lora.on('fc1'),
               name='fc1')(x, train)
    x = constrain(gelu(x), ('batch', 'length', 'mlp'))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Linear(d, ('mlp', 'embed'), dtype=self.dtype, lora=lora.on('fc2'), name='fc2')(x, train)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


def on_cpu() -> bool:
  """True when XLA compiles for the host CPU, where some ops have faster formulations
  (`blocked_attention`, `fft_conv1d`, `Linear`'s weight gradient); GPU/TPU keep the plain
  ones. Both compute the same maths (fp32 results agree to ~1e-6 relative)."""
  return jax.default_backend() == 'cpu'


def attention(q, k, v, dropout: float, train: bool, module: nn.Module, mask=None):
  """q, k, v: [B, N, H, hd] (q already scaled) -> [B, N, H*hd]."""
  if (mask is None and not (dropout and train) and q.shape[1] >= _ATTN_MIN_TOKENS
      and on_cpu()):
    return blocked_attention(q, k, v)
  b, n, h, hd = q.shape
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k)
  if mask is not None:  # mask: [B, N] True on keys that may be attended to.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  # Softmax in fp32 even under bf16 compute.
  attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  attn = nn.Dropout(dropout, deterministic=not train)(attn) if dropout else attn
  del module
  return jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, n, h * hd)


# ------------------------------------------------------------ CPU attention

_ATTN_BLOCK_BYTES = 2 ** 21  # Logits per loop step (~L2 size): 2 heads of 512 x 512 fp32.
_ATTN_MIN_TOKENS = 256  # Shorter sequences: the batched einsum's logits are small anyway.


def _heads_first(t):  # [B, N, H, d] -> [B*H, N, d]
  b, n, h, d = t.shape
  return t.transpose(0, 2, 1, 3).reshape(b * h, n, d)


def _attn_step(c: int, n: int) -> int:
  """Heads per loop step: the largest divisor of c whose logits fit _ATTN_BLOCK_BYTES."""
  best = 1
  for s in range(1, c + 1):
    if c % s == 0 and s * n * n * 4 <= _ATTN_BLOCK_BYTES:
      best = s
  return best


def _attn_block(args):
  """One step of heads: q, k, v [s, N, d] -> (out [s, N, d], logsumexp [s, N])."""
  q, k, v = args
  s = jnp.einsum('gqd,gkd->gqk', q, k).astype(jnp.float32)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  l = jnp.sum(e, axis=-1, keepdims=True)
  # Normalise the [N, d] output rather than the [N, N] probabilities (one pass fewer).
  o = jnp.einsum('gqk,gkd->gqd', e.astype(v.dtype), v) / l.astype(v.dtype)
  return o, (m + jnp.log(l))[..., 0]


def _attn_block_grad(args):
  """Flash-attention backward of one step, recomputing the probabilities from lse."""
  q, k, v, o, lse, do = args
  p = jnp.exp(jnp.einsum('gqd,gkd->gqk', q, k).astype(jnp.float32) - lse[..., None])
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  dp = jnp.einsum('gqd,gkd->gqk', do, v).astype(jnp.float32)
  ds = (p * (dp - delta)).astype(q.dtype)
  p = p.astype(q.dtype)
  dq = jnp.einsum('gqk,gkd->gqd', ds, k)
  dk = jnp.einsum('gqk,gqd->gkd', ds, q)
  dv = jnp.einsum('gqk,gqd->gkd', p, do)
  return dq, dk, dv


def _blocked_attention_fwd(q, k, v):
  b, n, h, d = q.shape
  qs, ks, vs = (_heads_first(t) for t in (q, k, v))
  step = _attn_step(b * h, n)
  split = lambda t: t.reshape(b * h // step, step, *t.shape[1:])
  o, lse = jax.lax.map(_attn_block, (split(qs), split(ks), split(vs)))
  o = o.reshape(b * h, n, d)
  out = o.reshape(b, h, n, d).transpose(0, 2, 1, 3).reshape(b, n, h * d)
  # Keep `out` (which the output projection keeps anyway), not its heads-first copy `o`.
  return out, (qs, ks, vs, out, lse.reshape(b * h, n))


def _blocked_attention_bwd(res, dout):
  qs, ks, vs, out, lse = res
  bh, n, d = qs.shape
  b = dout.shape[0]
  h = bh // b
  o, do = (_heads_first(t.reshape(b, n, h, d)) for t in (out, dout))
  step = _attn_step(bh, n)
  split = lambda t: t.reshape(bh // step, step, *t.shape[1:])
  grads = jax.lax.map(_attn_block_grad, tuple(split(t) for t in (qs, ks, vs, o, lse, do)))
  return tuple(g.reshape(b, h, n, d).transpose(0, 2, 1, 3) for g in grads)


@jax.custom_vjp
def blocked_attention(q, k, v):
  """Softmax attention computed a few heads at a time (q, k, v: [B, N, H, hd], q already
  scaled -> [B, N, H*hd]), the same maths as `attention` without mask or dropout.

  On CPU the [N, N] logits of a loop step stay in cache, and the backward is the
  flash-attention one (probabilities recomputed from the saved log-sum-exp, no [B, H, N, N]
  residual): about half the time of the batched einsum + softmax formulation.
  """
  return _blocked_attention_fwd(q, k, v)[0]


blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


class FusedAttention(nn.Module):
  """Multi-head self-attention with one fused `qkv` projection (DINO/timm layout).

  Returns (output, keys [B, N, D]) — the keys feed DINO's "key" feature variant.
  """
  num_heads: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  lora: LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    b, n, d = x.shape
    hd = d // self.num_heads
    lora = self.lora or LoraSpec()
    qkv = Linear(3 * d, ('embed', 'heads'), dtype=self.dtype, lora=lora.on('qkv'),
                 name='qkv')(x, train)  # [B, N, 3D]
    qkv = qkv.reshape(b, n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    out = attention(q * jnp.asarray(hd ** -0.5, q.dtype), k, v, self.dropout, train, self, mask)
    out = Linear(d, ('heads', 'embed'), dtype=self.dtype, lora=lora.on('proj'),
                 name='proj')(out, train)
    # Keys flattened as DINO's "key" features are: channel = dim_in_head * heads + head
    # (the release's qkv[1].permute(0, 2, 3, 1).flatten(-2)), not head-major.
    return out, k.transpose(0, 1, 3, 2).reshape(b, n, d)


class PatchConv(nn.Module):
  """A conv whose stride equals its kernel (non-overlapping patches), as reshape + matmul.

  Parameters have nn.Conv's layout (kernel [*window, in, out], bias [out]); XLA's CPU
  convolutions are many times slower than the equivalent matmul.
  x: [B, *spatial, in] -> [B, *spatial // window, out] (trailing remainders dropped).
  """
  features: int
  window: tuple[int, ...]
  kernel_init: Callable = nn.initializers.lecun_normal()
  axes: tuple[str | None, str | None] = ('embed', 'code')
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    nd = len(self.window)
    cin = x.shape[-1]
    kernel = self.param('kernel', with_axes(self.kernel_init, (None,) * nd + tuple(self.axes)),
                        (*self.window, cin, self.features))
    bias = self.param('bias', with_axes(nn.initializers.zeros, self.axes[1:]), (self.features,))
    b, spatial = x.shape[0], x.shape[1:-1]
    out_sp = [s // w for s, w in zip(spatial, self.window)]
    x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out_sp, self.window))]
    shape = [b]
    for o, w in zip(out_sp, self.window):
      shape += [o, w]
    x = x.reshape(*shape, cin)
    # Move the window axes next to the channels: [B, o1, o2.., w1, w2.., C].
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    x = x.transpose(perm).reshape(b, *out_sp, -1).astype(self.dtype)
    y = x @ kernel.reshape(-1, self.features).astype(self.dtype)
    return y + bias.astype(self.dtype)


def shifted_conv1d(x, kernel, groups: int = 1, padding: tuple[int, int] = (0, 0)):
  """Stride-1 1-D (grouped) conv as a sum of shifted matmuls, one per kernel tap.

  x: [B, T, Cin]; kernel: [K, Cin // groups, Cout] (lax 'WIO' layout). For the small
  kernels of the tiny configs this is several times faster than lax.conv on CPU.
  """
  k, cg_in, cout = kernel.shape
  b, _, cin = x.shape
  x = jnp.pad(x, ((0, 0), padding, (0, 0)))
  t_out = x.shape[1] - k + 1
  cg_out = cout // groups
  w = kernel.reshape(k, cg_in, groups, cg_out)
  xg = x.reshape(b, x.shape[1], groups, cg_in)
  out = 0.0
  for i in range(k):
    out = out + jnp.einsum('btgc,cgd->btgd', xg[:, i:i + t_out], w[i].astype(x.dtype))
  return out.reshape(b, t_out, cout)


@functools.lru_cache(maxsize=16)
def _rdft_matrix(k: int, n: int) -> np.ndarray:
  """[2F, k]: the real DFT of a length-k signal zero-padded to n, F = n // 2 + 1 bins;
  rows 0..F-1 are the real parts (cos), rows F..2F-1 the imaginary parts (-sin)."""
  ang = 2 * np.pi * np.outer(np.arange(n // 2 + 1), np.arange(k)) / n
  return np.concatenate([np.cos(ang), -np.sin(ang)]).astype(np.float32)


def fft_conv1d(x, kernel, groups: int = 1, padding: tuple[int, int] = (0, 0)):
  """Stride-1 1-D (grouped) conv, i.e. lax.conv's cross-correlation, by overlap-save FFTs.

  x: [B, T, Cin]; kernel: [K, Cin // groups, Cout] (lax 'WIO' layout) -> [B, T', Cout].
  Blocks of n = the power of two >= 2K samples (hop n - K + 1) are transformed with
  rfft, multiplied per frequency and group by conj(DFT(kernel)) (a batched complex
  matmul), and transformed back; the kernel's DFT is a real matmul (only its K nonzero
  taps). For HuBERT's positional conv (K=128, 16 groups, width 1024) this is ~8x fewer
  FLOPs than the direct conv, and its gradient avoids XLA's CPU grouped-conv backward
  (tens of times slower than the forward). Computed in fp32; agrees with lax.conv to ~1e-6.
  """
  k, cg_in, cout = kernel.shape
  b, _, cin = x.shape
  og = cout // groups
  n = max(8, 1 << int(np.ceil(np.log2(2 * k))))
  hop = n - k + 1  # Outputs per block, free of circular wrap-around.
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), padding, (0, 0)))
  t_out = xp.shape[1] - k + 1
  nblk = -(-t_out // hop)
  total = (nblk + 1) * hop
  xp = jnp.pad(xp, ((0, 0), (0, max(total - xp.shape[1], 0)), (0, 0)))[:, :total]
  hops = xp.reshape(b, nblk + 1, hop, cin)
  frames = jnp.concatenate([hops[:, :-1], hops[:, 1:, :k - 1]], axis=2)  # [B, nblk, n, Cin]
  xf = jnp.fft.rfft(frames, axis=2)  # [B, nblk, F, Cin]
  nf = xf.shape[2]
  xf = xf.reshape(b * nblk, nf, groups, cg_in).transpose(1, 2, 0, 3)  # [F, G, M, cg]
  w = kernel.astype(jnp.float32).reshape(k, cg_in, groups, og).transpose(0, 2, 1, 3)
  wf = (jnp.asarray(_rdft_matrix(k, n)) @ w.reshape(k, -1)).reshape(2, nf, groups, cg_in, og)
  wf = jax.lax.complex(wf[0], -wf[1])  # conj(DFT): correlation rather than convolution.
  yf = jnp.einsum('fgmc,fgco->fgmo', xf, wf).transpose(2, 0, 1, 3).reshape(b, nblk, nf, cout)
  y = jnp.fft.irfft(yf, n=n, axis=2)[:, :, :hop].reshape(b, nblk * hop, cout)[:, :t_out]
  return y.astype(x.dtype)


class DepthwiseMixer(nn.Module):
  """Mixes each patch token only with its 3x3 neighbours (depthwise conv).

  Used in place of attention by small image towers trained from scratch: features stay
  local, so the max over image space in the similarity volume stays a *where*. Computed
  as a sum of shifted, per-channel-scaled copies (exactly a 'SAME' depthwise conv).
  """
  grid: tuple[int, int]
  kernel: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del mask
    b, n, d = x.shape
    h, w = self.grid
    k = self.kernel
    weight = self.param('dwconv_kernel', with_axes(dense_init, (None, None, None, 'embed')),
                        (k, k, 1, d))
    bias = self.param('dwconv_bias', with_axes(nn.initializers.zeros, ('embed',)), (d,))
    r = k // 2
    x = x.astype(self.dtype)
    y = jnp.pad(x.reshape(b, h, w, d), ((0, 0), (r, k - 1 - r), (r, k - 1 - r), (0, 0)))
    out = 0.0
    for i in range(k):
      for j in range(k):
        out = out + y[:, i:i + h, j:j + w, :] * weight[i, j, 0].astype(self.dtype)
    out = (out + bias.astype(self.dtype)).reshape(b, n, d)
    return Linear(d, ('embed', 'embed'), dtype=self.dtype, name='proj')(out, train), None


class Block(nn.Module):
  """Pre-norm transformer block: x + mix(LN(x)); x + MLP(LN(x)) (DINO layout).

  Returns (tokens, keys of this block's attention or None).
  """
  num_heads: int
  mlp_hidden: int
  ln_eps: float = 1e-6
  dropout: float = 0.0
  mixer: str = 'attention'  # 'attention' | 'dwconv' (needs `grid`).
  grid: tuple[int, int] | None = None  # Patch grid (H, W) for the 'dwconv' mixer.
  dtype: Dtype = jnp.float32
  lora: LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    if self.mixer == 'attention':
      mixer = FusedAttention(self.num_heads, self.dropout, self.dtype, self.lora, name='attn')
    elif self.mixer == 'dwconv':
      mixer = DepthwiseMixer(self.grid, dtype=self.dtype, name='attn')
    else:
      raise ValueError(f"model mixer must be 'attention' or 'dwconv', got {self.mixer!r}")
    x = constrain(x, ('batch', 'length', 'embed'))
    y = LayerNorm(self.ln_eps, self.dtype, name='norm1')(x)
    y, keys = mixer(y, train=train, mask=mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = LayerNorm(self.ln_eps, self.dtype, name='norm2')(x)
    x = x + Mlp(self.mlp_hidden, self.dropout, self.dtype, self.lora, name='mlp')(y, train=train)
    return constrain(x, ('batch', 'length', 'embed')), keys


REMAT_POLICIES = {
    'full': None,  # Save nothing inside a block; recompute all of it in the backward.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Keep matmul outputs.
}


def maybe_remat(cls, remat: str, static_argnums=(2,)):
  """`remat`: 'none' | 'full' | 'dots' (per-block rematerialisation policy)."""
  if remat in ('none', '', None, False):
    return cls
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: use 'none', 'full' or 'dots'")
  return nn.remat(cls, static_argnums=static_argnums, policy=REMAT_POLICIES[remat])
