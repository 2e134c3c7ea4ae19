"""Hugging Face HuBERT keys -> params of models.audio.AudioTower.

Keys with or without HubertForCTC's 'hubert.' prefix; its CTC head (`lm_head.*`) is not part
of HubertModel: dropped and reported. Either weight-norm spelling of the positional conv
(`conv.weight_g` / `weight_v`, or torch's parametrization
`conv.parametrizations.weight.original0` / `original1`).

`masked_spec_embed` (HuBERT's time-mask vector) IS a parameter of our audio tower and is
converted. Hugging Face only creates it when mask_time_prob or mask_feature_prob > 0; a
HuBERT state dict without it gets U(0, 1) values (Hugging Face's init, seeded) and a note;
the released DenseAV state dict has it and it is required there.

Shape fields come from the weights: width, depth, mlp_dim, conv channels and kernels, conv
bias (present or not), front-end norm ('group' when only conv_layers.0 has a norm, the
GroupNorm of HuBERT-Base; 'layer' when every conv layer has one), feature-projection norm,
positional conv kernel and groups. From the folder's config.json when there is one: heads
(num_attention_heads), conv strides (conv_stride) and the norm order (do_stable_layer_norm).
Without it: heads = width // 64, the standard strides (5,2,2,2,2,2,2), and pre-norm ("stable
layer norm") exactly for models of width >= 1024 -- the published HuBERT-Large / X-Large are
pre-norm, HuBERT-Base (768) post-norm. LayerNorm eps stays the config's (DenseAV uses 1e-4
everywhere but in the conv front end, which keeps torch's 1e-5).
"""

from typing import Any, Mapping

import numpy as np

from denseav_jax import errors
from denseav_jax.conversion import mapping

DEFAULT_STRIDES = (5, 2, 2, 2, 2, 2, 2)
HEAD_WIDTH = 64  # Heads without config.json: width // 64, as every published HuBERT.
PRE_NORM_MIN_WIDTH = 1024  # HuBERT-Large and X-Large are pre-norm, Base post-norm.


def _pos_conv(r: mapping.Reader, p: str, tree: dict) -> None:
  pc = f'{p}encoder.pos_conv_embed.conv'
  if r.has(f'{pc}.parametrizations.weight.original0'):
    g_key = f'{pc}.parametrizations.weight.original0'
    v_key = f'{pc}.parametrizations.weight.original1'
  else:
    g_key, v_key = f'{pc}.weight_g', f'{pc}.weight_v'
  mapping.put(tree, 'pos_conv_embed/weight_g', r.get(g_key, lambda g: g.reshape(g.shape[-1]),
                                                     dst='pos_conv_embed/weight_g'))
  mapping.put(tree, 'pos_conv_embed/weight_v', r.get(v_key, mapping.conv1d_t,
                                                     dst='pos_conv_embed/weight_v'))
  mapping.put(tree, 'pos_conv_embed/bias', r.get(f'{pc}.bias', dst='pos_conv_embed/bias'))


def map_keys(r: mapping.Reader, p: str, *, fill_masked_spec: bool) -> tuple[dict, list[str]]:
  """(AudioTower params from HubertModel keys under prefix `p`, notes). With
  `fill_masked_spec`, a missing masked_spec_embed is drawn U(0, 1) (and noted)."""
  tree: dict = {}
  notes = []
  put = mapping.put
  for i in r.indices(f'{p}feature_extractor.conv_layers'):
    s, d = f'{p}feature_extractor.conv_layers.{i}', f'conv_layers_{i}'
    put(tree, f'{d}/conv/kernel', r.get(f'{s}.conv.weight', mapping.conv1d_t,
                                        dst=f'{d}/conv/kernel'))
    if r.has(f'{s}.conv.bias'):
      put(tree, f'{d}/conv/bias', r.get(f'{s}.conv.bias', dst=f'{d}/conv/bias'))
    if r.has(f'{s}.layer_norm.weight'):
      mapping.norm(r, f'{s}.layer_norm', f'{d}/layer_norm', tree)
  fp = f'{p}feature_projection'
  if r.has(f'{fp}.layer_norm.weight'):
    mapping.norm(r, f'{fp}.layer_norm', 'feature_projection/layer_norm', tree)
  mapping.linear(r, f'{fp}.projection', 'feature_projection/projection', tree, lora_keys=False)
  if r.has(f'{p}masked_spec_embed') or not fill_masked_spec:
    put(tree, 'masked_spec_embed', r.get(f'{p}masked_spec_embed', dst='masked_spec_embed'))
  _pos_conv(r, p, tree)
  mapping.norm(r, f'{p}encoder.layer_norm', 'layer_norm', tree)
  for i in r.indices(f'{p}encoder.layers'):
    s, d = f'{p}encoder.layers.{i}', f'layers_{i}'
    for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      mapping.linear(r, f'{s}.attention.{proj}', f'{d}/attention/{proj}', tree)
    mapping.norm(r, f'{s}.layer_norm', f'{d}/layer_norm', tree)
    for dense in ('intermediate_dense', 'output_dense'):
      mapping.linear(r, f'{s}.feed_forward.{dense}', f'{d}/feed_forward/{dense}', tree)
    mapping.norm(r, f'{s}.final_layer_norm', f'{d}/final_layer_norm', tree)
  if 'masked_spec_embed' not in tree and fill_masked_spec:
    proj = tree.get('feature_projection', {}).get('projection', {}).get('kernel')
    if proj is not None:
      rng = np.random.default_rng(0)
      tree['masked_spec_embed'] = rng.uniform(size=(proj.shape[1],)).astype(np.float32)
      notes.append('masked_spec_embed is not in the input (Hugging Face creates it only when '
                   'mask_time_prob or mask_feature_prob > 0): initialised U(0, 1)')
  return tree, notes


def clean(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Strips HubertForCTC's 'hubert.' prefix and drops its 'lm_head.*'. Returns (state dict,
  dropped keys)."""
  dropped = sorted(k for k in sd if k.startswith('lm_head.'))
  sd = {k: v for k, v in sd.items() if not k.startswith('lm_head.')}
  if sd and all(k.startswith('hubert.') for k in sd):
    sd = {k[len('hubert.'):]: v for k, v in sd.items()}
  return sd, dropped


def tower_params(sd: Mapping[str, Any], prefix: str = '') -> dict:
  """Params of models.audio.AudioTower from Hugging Face HubertModel keys.

  Only keys under `prefix` are read (with prefix '' the whole dict, after stripping a
  'hubert.' prefix and dropping HubertForCTC's 'lm_head.*'). Both weight-norm spellings are
  accepted. A missing masked_spec_embed (Hugging Face omits it when no masking is
  configured) is filled with U(0, 1) values. Raises errors.ConversionError listing unknown
  and missing keys.
  """
  part = mapping.sub(sd, prefix)
  if not prefix:
    part, _ = clean(part)
  r = mapping.Reader(part)
  tree, _ = map_keys(r, '', fill_masked_spec=True)
  mapping.raise_if_bad('HuBERT state dict', [prefix + k for k in r.unused()],
                       [prefix + k for k in r.missing], [prefix + k for k in r.misshaped])
  return tree


def _front_end_norm(convs) -> str:
  normed = [i for i, v in convs if 'layer_norm' in v]
  if normed == [i for i, _ in convs]:
    return 'layer'
  if normed == [0]:
    return 'group'
  raise errors.ConversionError(
      f'conv feature extractor with norms on layers {normed}: expected all '
      "(feat_extract_norm='layer') or only the first ('group')")


def tower_fields(params: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
  """AudioTower shape fields of converted HuBERT params (config.model.audio values);
  `hf_config`: the model folder's config.json, if any."""
  hf = dict(hf_config or {})
  convs = sorted((int(n.split('_')[-1]), v) for n, v in params.items()
                 if n.startswith('conv_layers_'))
  if not convs:
    raise errors.ConversionError(
        'no feature_extractor.conv_layers.* keys: not a HuBERT state dict')
  kernels = tuple(int(v['conv']['kernel'].shape[0]) for _, v in convs)
  front_end_norm = _front_end_norm(convs)
  if 'conv_stride' in hf:
    strides = tuple(int(s) for s in hf['conv_stride'])
  elif len(kernels) == len(DEFAULT_STRIDES):
    strides = DEFAULT_STRIDES
  else:
    raise errors.ConversionError(
        f'{len(kernels)} conv layers but no config.json with conv_stride: read the Hugging '
        'Face model folder, not its weights file')
  width = int(params['feature_projection']['projection']['kernel'].shape[1])
  v = params['pos_conv_embed']['weight_v']  # [K, D / groups, D]
  layers = [n for n in params if n.startswith('layers_')]
  heads = int(hf.get('num_attention_heads', width // HEAD_WIDTH))
  if 'do_stable_layer_norm' in hf:
    norm_first = bool(hf['do_stable_layer_norm'])
  else:
    norm_first = width >= PRE_NORM_MIN_WIDTH
  out = dict(
      frontend='conv', conv_channels=int(convs[0][1]['conv']['kernel'].shape[-1]),
      conv_kernels=kernels, conv_strides=strides,
      conv_bias='bias' in convs[0][1]['conv'], feat_extract_norm=front_end_norm,
      feat_proj_layer_norm='layer_norm' in params['feature_projection'], width=width,
      depth=len(layers), num_heads=heads, pos_conv_kernel=int(v.shape[0]),
      pos_conv_groups=width // int(v.shape[1]), norm_first=norm_first)
  if layers:
    ff = params['layers_0']['feed_forward']
    out['mlp_dim'] = int(ff['intermediate_dense']['kernel'].shape[1])
    q = params['layers_0']['attention']['q_proj']
    out['lora_rank'] = int(q['lora_a'].shape[1]) if 'lora_a' in q else 0
  return out
