"""PyTorch re-statement of the released DenseAV: model, aligners, loss and training step.

Written here (not the release's code) from the release's `train_av_alignment.py` /
`aligners.py` / `aggregators.py`, for the conversion parity tests
(tests/conversion/test_convert.py) and for `python -m denseav_jax.bench.train` (the same
training step in PyTorch, same weights as the JAX trainer through
`denseav_jax.conversion.denseav.model_params`).

* Towers: `torch_models.DinoViT` with peft-style LoRA on every `qkv` (`LoraLinear`: the
  `base_layer` / `lora_A.default` / `lora_B.default` layout), Hugging Face `HubertModel`.
* Aligners: `torch_aligner(kind, cin, code)`, every aligner of the release's get_aligner.
* `TorchDenseAV`: both towers, the release aligners (`image_linear`,
  `audio_sa_3_3_pool_2`), the learned audio CLS and the calibrator's `sim_cal.w`;
  `released_state_dict()` gives its weights under the release's key names. `forward`
  (no_grad) returns the features and the misa score matrix (parity tests); `train_outputs`
  is the differentiable training forward.
* `release_loss`: misa over the B x B batch, the calibrator, symmetric InfoNCE and the
  regularisers (tv, silence_l1/l2, nonneg_pressure, neg_audio, mixup, cal_balance) as the
  release's `LitAVAligner.loss` computes them.
* `TrainStep`: one update as the release's phase 2 runs it: image branch under no_grad,
  HuBERT in train mode, loss.backward(), each parameter's gradient clipped to norm 10 on its
  own, Adam (eps 1e-7) with the linear warm-up.

Layouts are the release's: images [B, 3, H, W], audio maps [B, C, F, T], image maps
[B, C, H, W]. Needs torch and transformers (`pip install -e .[convert]`); without them,
importing this module raises errors.MissingExtra saying so.
"""

import math

import numpy as np

from denseav_jax import errors

torch = errors.require('torch', 'convert', 'denseav_jax.testing.torch_denseav (the PyTorch '
                       're-statement of the released DenseAV)')
from torch import nn  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

from denseav_jax.testing import torch_models as tm  # pylint: disable=wrong-import-position
from denseav_jax.models import preprocess

IMG_P = 'image_model.base_model.model.model.'  # The release's key prefixes.
AUD_P = 'audio_model.model.'
MASK_FLOOR = 1e-3  # masked mean: sum(x m) / max(sum(m), 1e-3).


# ------------------------------------------------------------------------ LoRA

class LoraLinear(nn.Module):
  """peft's LoRA Linear layout: base_layer, lora_A/lora_B ModuleDicts keyed by adapter.

  lora_B starts at 0.05 N(0, 1) (seeded; peft starts it at zero) so the adapter matters."""

  def __init__(self, base: nn.Linear, rank: int, alpha: float = 32.0, seed: int = 0,
               dropout: float = 0.0):
    super().__init__()
    self.base_layer = base
    self.lora_dropout = nn.ModuleDict({'default': nn.Dropout(dropout)})
    self.lora_A = nn.ModuleDict({'default': nn.Linear(base.in_features, rank, bias=False)})
    self.lora_B = nn.ModuleDict({'default': nn.Linear(rank, base.out_features, bias=False)})
    self.scaling = alpha / rank
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      self.lora_B['default'].weight.copy_(0.05 * torch.randn(base.out_features, rank,
                                                              generator=g))

  def forward(self, x):
    lora = self.lora_B['default'](self.lora_A['default'](self.lora_dropout['default'](x)))
    return self.base_layer(x) + lora * self.scaling


# -------------------------------------------------------------------- aligners

class ChannelNorm(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.norm = nn.LayerNorm(dim, eps=1e-4)

  def forward(self, x, cls):
    return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), self.norm(cls)


class FrequencyAvg(nn.Module):
  def forward(self, x, cls):
    return x.mean(2, keepdim=True), cls


class TimePool2(nn.Module):
  def __init__(self, cin, cout, cls_layer):
    super().__init__()
    self.layer = nn.Conv2d(cin, cout, (1, 3), stride=(1, 3))
    if cls_layer:
      self.cls_layer = nn.Linear(cin, cout)

  def forward(self, x, cls):
    return self.layer(x), (self.cls_layer(cls) if hasattr(self, 'cls_layer') else cls)


class Sequential2(nn.Module):
  def __init__(self, *mods):
    super().__init__()
    self.mod_list = nn.ModuleList(mods)

  def forward(self, x, cls):
    for m in self.mod_list:
      x, cls = m(x, cls)
    return x, cls


class Identity2(nn.Module):
  def forward(self, x, cls):
    return x, cls


class LinearAligner(nn.Module):
  """Release LinearAligner: [ChannelNorm] + 1x1 conv; CLS through cls_layer un-normalised."""

  def __init__(self, cin, cout, use_norm=True):
    super().__init__()
    self.norm = ChannelNorm(cin) if use_norm else Identity2()
    self.layer = nn.Conv2d(cin, cout, 1)
    self.cls_layer = nn.Linear(cin, cout)

  def forward(self, x, cls):
    return self.layer(self.norm(x, cls)[0]), self.cls_layer(cls)


class IdLinear(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.layer = nn.Conv2d(dim, dim, 1)

  def forward(self, x, cls):
    return self.layer(x), cls


class TimePool(nn.Module):
  """Release LearnedTimePool (no max-pool): ChannelNorm, (1,3)/3 conv; CLS normalised."""

  def __init__(self, dim):
    super().__init__()
    self.norm = ChannelNorm(dim)
    self.layer = nn.Conv2d(dim, dim, (1, 3), stride=(1, 3))

  def forward(self, x, cls):
    x, cls = self.norm(x, cls)
    return self.layer(x), cls


class PaddedSelfAttention(nn.Module):
  """Release SelfAttentionAligner: channels zero-padded at the front to a multiple of the
  heads, [CLS; tokens] through one block, the padding channels dropped again."""

  def __init__(self, dim, heads: int = 6):
    super().__init__()
    self.pad = (-dim) % heads
    self.block = tm.Block(dim + self.pad, heads, 4, eps=1e-4)

  def forward(self, x, cls):
    x = F.pad(x, [0, 0, 0, 0, self.pad, 0])
    cls = F.pad(cls, [self.pad, 0])
    b, c, h, w = x.shape
    tokens = torch.cat([cls[:, None], x.reshape(b, c, h * w).permute(0, 2, 1)], dim=1)
    tokens, _ = self.block(tokens)
    out = tokens[:, 1:].reshape(b, h, w, c).permute(0, 3, 1, 2)
    return out[:, self.pad:], tokens[:, 0, self.pad:]


def torch_aligner(kind: str, cin: int, code: int, heads: int = 6) -> nn.Module:
  """The release's get_aligner(kind, cin, code), re-stated with the modules above."""
  sa = lambda: PaddedSelfAttention(code, heads)
  seqs = {
      'audio_linear': lambda: (LinearAligner(cin, code), FrequencyAvg()),
      'audio_sa': lambda: (LinearAligner(cin, code), FrequencyAvg(), sa()),
      'audio_sa_sa': lambda: (FrequencyAvg(), LinearAligner(cin, code), sa(), sa()),
      'audio_3_3_pool': lambda: (LinearAligner(cin, code), FrequencyAvg(), TimePool(code),
                                 TimePool(code)),
      'audio_sa_3_3_pool': lambda: (LinearAligner(cin, code), FrequencyAvg(), TimePool(code),
                                    TimePool(code), sa()),
      'audio_sa_3_3_pool_2': lambda: (FrequencyAvg(), ChannelNorm(cin), TimePool2(cin, code, True),
                                      TimePool2(code, code, False), sa()),
  }
  if kind in seqs:
    return Sequential2(*seqs[kind]())
  return {'image_linear': lambda: LinearAligner(cin, code),
          'image_linear_no_norm': lambda: LinearAligner(cin, code, use_norm=False),
          'image_idlinear': lambda: IdLinear(cin),
          'image_id': Identity2,
          'image_norm': lambda: ChannelNorm(cin)}[kind]()


# ----------------------------------------------------------------------- model

IMAGE_FULL = dict(patch_size=8, width=384, depth=12, num_heads=6, img_size=224)  # DINO S/8


class TorchDenseAV(nn.Module):
  """The released model: DINO ViT (+ LoRA on qkv), HuBERT-Large, aligners, audio CLS,
  calibrator.

  image: DinoViT fields (default DINO ViT-S/8 at 224, `IMAGE_FULL`); audio: keyword
  arguments of `torch_models.hubert('large', ...)` (num_layers, hidden_size, dropouts,
  mask_time_prob, apply_spec_augment, ...); lora_*: the adapters (seed: lora_B of block i
  is drawn with seed lora_seed + i); seed: torch.manual_seed before building (None: as is).
  The DINO backbone is frozen (requires_grad False) but for the adapters, as in the release.
  """

  def __init__(self, *, code: int = 384, image=None, audio=None, lora_rank: int = 8,
               lora_alpha: float = 32.0, lora_dropout: float = 0.0, lora_seed: int = 10,
               aligner_heads: int = 6, image_aligner: str = 'image_linear',
               audio_aligner: str = 'audio_sa_3_3_pool_2', cal_init: float = 1.0,
               seed: int | None = None):
    super().__init__()
    if seed is not None:
      torch.manual_seed(seed)
    image = dict(IMAGE_FULL, **(image or {}))
    self.vit = tm.DinoViT(image['patch_size'], image['width'], depth=image['depth'],
                          num_heads=image['num_heads'], eps=1e-4, img_size=image['img_size'])
    if lora_rank:
      for i, blk in enumerate(self.vit.blocks):
        blk.attn.qkv = LoraLinear(blk.attn.qkv, rank=lora_rank, alpha=lora_alpha,
                                  seed=lora_seed + i, dropout=lora_dropout)
    self.hubert = tm.hubert('large', **(audio or {}))
    width = self.hubert.config.hidden_size
    self.image_aligner = torch_aligner(image_aligner, image['width'], code, aligner_heads)
    self.audio_aligner = torch_aligner(audio_aligner, width, code, aligner_heads)
    self.audio_cls = nn.Parameter(torch.randn(width))
    self.sim_cal_w = nn.Parameter(torch.tensor([math.log(cal_init)]))
    for name, p in self.vit.named_parameters():
      p.requires_grad_('lora_' in name)

  def released_state_dict(self):
    """A copy of the weights under the release's state-dict keys (LitAVAligner with peft)."""
    sd = {}
    for prefix, mod in ((IMG_P, self.vit), (AUD_P, self.hubert),
                        ('image_aligner.', self.image_aligner),
                        ('audio_aligner.', self.audio_aligner)):
      sd.update({prefix + k: v.detach().clone() for k, v in mod.state_dict().items()})
    sd['audio_cls'] = self.audio_cls.detach().clone()
    sd['sim_cal.w'] = self.sim_cal_w.detach().clone()
    return sd

  def calibration(self):
    """w = clamp(exp(theta), 0.01, 100) (release SimilarityCalibrator.get_w)."""
    return torch.exp(self.sim_cal_w).clamp(0.01, 100.0)

  def embed_image(self, images_u8):
    """uint8 [B, S, S, 3] (numpy or tensor) -> (feats [B, C, H, W], cls [B, C])."""
    images = torch.as_tensor(images_u8, device=self.audio_cls.device)
    mean = torch.from_numpy(preprocess.IMAGENET_MEAN).to(images.device)
    std = torch.from_numpy(preprocess.IMAGENET_STD).to(images.device)
    x = ((images.float() / 255.0 - mean) / std).permute(0, 3, 1, 2)
    return self.image_aligner(*self.vit(x))

  def embed_audio(self, wave, audio_len, audio_start=None):
    """float [B, L] (numpy or tensor) -> (feats [B, C, 1, T], cls [B, C], mask [B, T] bool).

    Each padded clip is normalised to zero mean, unit variance; the mask is the valid-sample
    mask [audio_start, audio_len) linearly resized to T and thresholded at 0.01 (a row with
    no true step gets a random one, as the release's interpolate_mask)."""
    w = torch.as_tensor(wave, device=self.audio_cls.device).float()
    w = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + 1e-7)
    dense = self.hubert(w).last_hidden_state.permute(0, 2, 1).unsqueeze(2)  # [B, D, 1, T]
    cls = self.audio_cls[None].expand(dense.shape[0], -1)
    feats, cls = self.audio_aligner(dense, cls)
    valid = sample_mask(audio_len, w.shape[1], audio_start)
    mask = resize_time(valid, feats.shape[-1]) > 0.01
    for row in torch.where(mask.sum(1) == 0)[0]:
      mask[row, torch.randint(0, mask.shape[1], (), device=mask.device)] = True
    return feats, cls, mask

  @torch.no_grad()
  def forward(self, images_u8, wave, audio_len):
    """Evaluation outputs (no_grad): features, CLS, the mask and the misa score matrix."""
    img, img_cls = self.embed_image(images_u8)
    aud, aud_cls, mask = self.embed_audio(wave, audio_len)
    return dict(image_feats=img, image_cls=img_cls, audio_feats=aud, audio_cls=aud_cls,
                mask=mask, scores=misa_scores(aud, mask, img))

  def train_outputs(self, batch, image_pool: int = 2):
    """The release's training forward (forward_image + forward_audio + prep_feats).

    The image branch (tower and aligner) runs under no_grad (release quirk), then k x k
    average pooling; batch: numpy/tensor dict with image, audio, audio_len and optionally
    audio_start, pos_mask [B, L] and image_mask [B, S, S]."""
    with torch.no_grad():
      img, img_cls = self.embed_image(batch['image'])
    if image_pool > 1:
      img = F.avg_pool2d(img, image_pool)
    aud, aud_cls, mask = self.embed_audio(batch['audio'], batch['audio_len'],
                                          batch.get('audio_start'))
    out = dict(image_feats=img, image_cls=img_cls, audio_feats=aud, audio_cls=aud_cls,
               audio_mask=mask, cal=self.calibration())
    if batch.get('pos_mask') is not None:  # Soft (not thresholded), as the release.
      pos = torch.as_tensor(batch['pos_mask'], device=aud.device).float()
      out['pos_mask'] = resize_time(pos, aud.shape[-1])
    if batch.get('image_mask') is not None:
      m = torch.as_tensor(batch['image_mask'], device=img.device).float()[:, None]
      out['image_mask'] = F.adaptive_avg_pool2d(m, img.shape[-2:])[:, 0]
    return out


def sample_mask(audio_len, length: int, audio_start=None):
  """[B, L] float: 1 on the valid samples [audio_start, audio_len)."""
  audio_len = torch.as_tensor(audio_len)
  t = torch.arange(length, device=audio_len.device)[None]
  valid = t < audio_len[:, None]
  if audio_start is not None:
    valid &= t >= torch.as_tensor(audio_start, device=audio_len.device)[:, None]
  return valid.float()


def resize_time(x, size: int):
  """[B, L] -> [B, size]: linear, half-pixel centres (release: F.interpolate bilinear)."""
  return F.interpolate(x[:, None], size=size, mode='linear')[:, 0]


# ------------------------------------------------------------------------ loss

def split_heads(x, k: int):
  """[B, C, ...] -> [B, k, C // k, ...]."""
  return x.reshape(x.shape[0], k, x.shape[1] // k, *x.shape[2:])


def misa_scores(aud, mask, img, num_heads: int = 1):
  """[A, V] misa scores (release 'misa', head_agg 'max_elementwise'): the whole volume
  S[a, v, k, h, w, f, t], max over heads, max over h, w, mean over f, masked mean over t."""
  vol = torch.einsum('akcft,vkchw->avkhwft', split_heads(aud.float(), num_heads),
                     split_heads(img.float(), num_heads))
  x = vol.amax(dim=2).amax(dim=(2, 3)).mean(2)  # [A, V, T]
  m = mask.float()[:, None]
  return (x * m).sum(-1) / m.sum(-1).clamp_min(MASK_FLOOR)


def nce(logits):
  """Symmetric InfoNCE with the identity labels."""
  eye = torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
  return (0.5 * (-F.log_softmax(logits, dim=1) * eye).sum(1).mean()
          + 0.5 * (-F.log_softmax(logits.t(), dim=1) * eye).sum(1).mean())


def release_loss(out, weights, *, num_heads: int = 1, cal_init: float = 1.0,
                 num_samples: int = 250, nonneg_idx=None, silence_idx=None):
  """(total, terms) of the release's LitAVAligner.loss for loss_type 'nce', misa, no CLS,
  no clamping (nonneg_sim False), K heads ('max_elementwise').

  weights: dict with tv_weight, silence_l1, silence_l2, nonneg_pressure, neg_audio_weight,
  mixup_weight, cal_balance_weight (0 = off). nonneg_idx (dict b, f, t, h, w of
  num_samples) / silence_idx ((b, t)): the random draws, for a run that must match
  another implementation's; None draws them as the release (torch.randint / randperm).
  neg_audio needs out['pos_mask'], mixup out['image_mask'] (else the weight must be 0).
  """
  aud, img, mask, cal = out['audio_feats'], out['image_feats'], out['audio_mask'], out['cal']
  b, c, f, t = aud.shape
  _, _, h, w = img.shape
  dev = aud.device
  as_index = lambda v: torch.as_tensor(np.array(v, np.int64), device=dev)
  a_k = split_heads(aud.float(), num_heads)  # [B, K, c, F, T]
  i_k = split_heads(img.float(), num_heads)  # [B, K, c, H, W]
  terms = {}
  logits = cal * misa_scores(aud, mask, img, num_heads)
  logits = logits - logits.mean()
  terms['nce'] = nce(logits)
  paired = torch.einsum('bkcft,bkchw,bt->bkhwft', a_k, i_k, mask.float())
  total = terms['nce']
  if weights.get('nonneg_pressure'):
    if nonneg_idx is None:
      nonneg_idx = {k: torch.randint(0, n, (num_samples,), device=dev)
                    for k, n in (('b', b), ('f', f), ('t', t), ('h', h), ('w', w))}
    ix = {k: v if torch.is_tensor(v) else as_index(v) for k, v in nonneg_idx.items()}
    ra = a_k[ix['b'], :, :, ix['f'], ix['t']]  # [n, K, c]
    ri = i_k[ix['b'], :, :, ix['h'], ix['w']]
    terms['nonneg_pressure'] = torch.einsum('ikc,jkc->ijk', ra, ri).clamp_max(0).square().mean()
    total = total + weights['nonneg_pressure'] * terms['nonneg_pressure']
  if weights.get('silence_l1') or weights.get('silence_l2'):
    if silence_idx is None:
      sb, st = torch.where(~mask)
      if len(sb) > num_samples:
        pick = torch.randperm(len(sb), device=dev)[:num_samples]
        sb, st = sb[pick], st[pick]
    else:
      sb, st = (as_index(v) for v in silence_idx)
    if len(sb) == num_samples:  # Skipped with fewer silent steps (release).
      silent = a_k[sb, :, :, :, st].mean(-1)  # [n, K, c]
      x = torch.einsum('bkchw,dkc->bkdhw', i_k, silent)
      terms['silence_l1'], terms['silence_l2'] = x.abs().mean(), x.square().mean()
      total = (total + weights.get('silence_l1', 0.0) * terms['silence_l1']
               + weights.get('silence_l2', 0.0) * terms['silence_l2'])
  if weights.get('neg_audio_weight'):
    neg = ((1 - out['pos_mask']) * mask.float()).reshape(b, 1, 1, 1, 1, t).expand(paired.shape)
    if neg.sum() > 0:  # The release skips the term (with a warning) otherwise.
      terms['neg_audio'] = (paired.square() * neg).sum() / neg.sum().clamp_min(0.1)
      total = total + weights['neg_audio_weight'] * terms['neg_audio']
  if weights.get('tv_weight'):
    terms['tv'] = (paired[..., 1:] - paired[..., :-1]).square().mean()
    total = total + weights['tv_weight'] * terms['tv']
  if weights.get('cal_balance_weight'):
    terms['cal_balance'] = (math.log(cal_init) - torch.log(cal.clamp_min(1e-8))).clamp_min(
        0).square().mean()
    total = total + weights['cal_balance_weight'] * terms['cal_balance']
  if weights.get('mixup_weight'):
    neg = (1 - out['image_mask']).reshape(b, 1, h, w, 1, 1).expand(paired.shape)
    terms['mixup'] = (paired * neg).square().sum() / neg.sum().clamp_min(0.1)
    total = total + weights['mixup_weight'] * terms['mixup']
  return total, terms


# ------------------------------------------------------------------ train step

class TrainStep:
  """One phase-2 update of `model` (see the module doc).

  Adam (eps) over every parameter that requires grad (the DINO adapters and the image
  aligner included, as the release; they get no gradient through the no_grad image branch,
  and torch's Adam skips parameters without one); the learning rate warms up linearly from
  0 over `warmup` steps (release LambdaLR). Call with a batch dict; returns (loss, terms)."""

  def __init__(self, model: TorchDenseAV, *, lr: float, warmup: int, eps: float = 1e-7,
               clip: float = 10.0, weights=None, num_heads: int = 1, cal_init: float = 1.0,
               image_pool: int = 2, num_samples: int = 250):
    self.model = model
    self.params = [p for p in model.parameters() if p.requires_grad]
    self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps)
    self.sched = torch.optim.lr_scheduler.LambdaLR(
        self.opt, lambda step: min(max(float(step), 0.0) / max(warmup, 1), 1.0))
    self.clip, self.weights = clip, dict(weights or {})
    self.kw = dict(num_heads=num_heads, cal_init=cal_init, num_samples=num_samples)
    self.image_pool = image_pool

  def __call__(self, batch, nonneg_idx=None, silence_idx=None):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    out = self.model.train_outputs(batch, self.image_pool)
    loss, terms = release_loss(out, self.weights, nonneg_idx=nonneg_idx,
                               silence_idx=silence_idx, **self.kw)
    loss.backward()
    for p in self.params:  # Per-tensor clipping (release on_before_optimizer_step).
      if p.grad is not None:
        torch.nn.utils.clip_grad_norm_(p, self.clip)
    self.opt.step()
    self.sched.step()
    return loss.detach(), {k: v.detach() for k, v in terms.items()}

  def state_dict(self):
    """What a Lightning checkpoint holds: the weights and the optimizer state."""
    return {'state_dict': self.model.state_dict(), 'optimizer_states': [self.opt.state_dict()],
            'lr_schedulers': [self.sched.state_dict()]}
