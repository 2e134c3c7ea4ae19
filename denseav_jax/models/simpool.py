"""SimPool attention pooling (the release's `SimPoolAggregator` pooling, `sim.agg='simpool'`).

Semantics follow the release's `SimPool(dim, gamma=1.25)` as its aggregator uses it:

  query  = mean of the tokens (global average pooling)          [B, 1, d]
  keys   = values = LayerNorm(x)  (eps 1e-6, learned scale/bias) [B, N, d]
  attn   = softmax over N of (Wq query)(Wk keys)^T * head_dim^-0.5, per head
  out    = (attn @ (v - min(v) + 1e-6)^gamma)^(1/gamma)  if gamma is set
           attn @ v                                       otherwise
  (+ beta, a learned scalar initialised at 0, if use_beta and gamma is set)

`min(v)` is the minimum over the WHOLE value tensor, i.e. over every batch element, as in
the release: one example's pooled vector depends on the other examples in the batch (so pooling
a batch in chunks gives different vectors). Under `jit` with a globally sharded batch the
reduction (`global_min`) is global, which is what the release computes on its batch. Note
that the shift is not added back.

Tokens are channels-last: any [B, ..., d] input (audio [B, F, T, C], image [B, H, W, C],
or tokens [B, N, C]) is flattened to [B, N, d]. The output is always [B, d] (the release's
trailing `.squeeze()` would also drop a batch of one, and with gamma and several heads it
leaves [B, heads, d / heads]; we flatten heads head-major, as its no-gamma branch does).
The computation runs in float32 (the release casts features to float32 before pooling).

Parameter init: PyTorch `nn.Linear`-like for `wq` / `wk` (kernel ~ U(-1/sqrt(d), 1/sqrt(d)),
i.e. kaiming_uniform(a=sqrt(5)); bias, if any, zeros rather than torch's uniform), LayerNorm
scale ones / bias zeros (the same in both frameworks). Kernels are [in, out] (the transpose
of torch's `weight`).
"""

import flax.linen as nn
import jax.numpy as jnp

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = torch.nn.Linear's default weight init.
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def global_min(x):
  """min(x) over every element, with its gradient routed to one argmin element.

  Same value as jnp.min. jnp.min's gradient finds the minimum's locations by comparing x
  with the result; when XLA recomputes x in a different fusion (seen on CPU at backend
  optimisation level 0) the rounding can differ, no element compares equal, and the
  gradient becomes 0/0. A gather of the argmin has no such comparison. (On exact ties
  torch splits the gradient evenly; here it all goes to the first minimum.)
  """
  flat = x.reshape(-1)
  return flat[jnp.argmin(flat)]


class SimPool(nn.Module):
  dim: int
  num_heads: int = 1
  qkv_bias: bool = False
  gamma: float | None = 1.25
  use_beta: bool = False
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    """x: [B, ..., dim] -> [B, dim] (float32)."""
    if x.shape[-1] != self.dim:
      raise ValueError(f'SimPool(dim={self.dim}) got features with {x.shape[-1]} channels')
    if self.dim % self.num_heads:
      raise ValueError(f'SimPool dim={self.dim} is not divisible by num_heads={self.num_heads}')
    b, d, h = x.shape[0], self.dim, self.num_heads
    hd = d // h
    x = x.astype(jnp.float32).reshape(b, -1, d)  # [B, N, d]
    n = x.shape[1]
    query = x.mean(axis=1, keepdims=True)  # [B, 1, d]
    v = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name='norm_patches')(x)
    dense = lambda name: nn.Dense(d, use_bias=self.qkv_bias, kernel_init=torch_linear_init,
                                  name=name)
    q = dense('wq')(query).reshape(b, h, hd)  # One query per head.
    k = dense('wk')(v).reshape(b, n, h, hd)
    vv = v.reshape(b, n, h, hd)
    logits = jnp.einsum('bhc,bnhc->bhn', q, k) * hd ** -0.5
    attn = nn.softmax(logits, axis=-1)  # [B, heads, N]
    if self.gamma is None:
      out = jnp.einsum('bhn,bnhc->bhc', attn, vv)
    else:
      shifted = vv - global_min(vv) + self.eps  # Global min: couples the batch (release).
      out = jnp.einsum('bhn,bnhc->bhc', attn, shifted ** self.gamma) ** (1.0 / self.gamma)
      if self.use_beta:
        out = out + self.param('beta', nn.initializers.zeros, (1,), jnp.float32)
    return out.reshape(b, d)
