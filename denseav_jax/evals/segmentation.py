"""Prompted semantic segmentation (docs/evaluation.md#prompted-segmentation).

  config.evals.speech_prompted = dict(type='prompted_segmentation',
      dataset='ade20k_speech_prompted', advanced=True)

Per example the matched pair's heat maps are computed on the devices by the one heat-map
definition that predict draws too (similarity/heatmap.py, the release's: the volume times
the audio mask, plus the CLS term with sim.use_cls, its mean over audio frequency, heads
combined as the score combines them, a weighted mean over time): the 'basic' map weights
the steps by the audio mask, the 'advanced' one (advanced=True, for sets with prompt word
timings) by the prompt word's window, whose masked steps count as zeros. Only
these [H, W] maps and the bit-packed ground truth come back to the hosts. Metrics
(metrics.py): heat maps min-max normalised over the set, resized to the label map, AP and
best-of-20-threshold IoU pooled per class, mean over classes.

Metrics: basic_ap, basic_iou, chance_ap, and advanced_ap, advanced_iou.
Figures: an overlay grid per class, the activation over time beside the waveform, and the
PCA picture of both modalities' dense features.
"""

from __future__ import annotations

import jax
import numpy as np

from denseav_jax import errors
from denseav_jax.data.synthetic import world
from denseav_jax.evals import base
from denseav_jax.evals import figures
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.evals import pca
from denseav_jax.similarity import heatmap


def pair_maps(emb, opts: heatmap.Options, windows=None):
  """Per-example maps of matched pairs, on the devices (heatmap.pair_maps).

  Returns heat [B, H, W] (the basic map), heat_heads [B, K, H, W] (each head's basic
  map), activation [B, K, T] (max over the image, mean over frequency) and, with
  windows [B, T], heat_advanced [B, H, W]; only these come back to the hosts.
  """
  out = heatmap.pair_maps(emb['audio'], emb['image'], emb['mask'], opts, windows,
                         emb.get('audio_cls'), emb.get('image_cls'))
  keep = ('heat', 'heat_heads', 'activation', 'heat_advanced')
  return {k: v for k, v in out.items() if k in keep}


def class_label(eval_set, c: int) -> str:
  if eval_set.synthetic:
    return world.CLASS_NAMES[c - 1] if c > 0 else '(filler)'
  return f'class {c}'


class PromptedSegmentation(base.Evaluator):
  type_name = 'prompted_segmentation'
  DEFAULTS = dict(dataset='', num_examples=0, advanced=False, word_margin_s=0.2,
                  num_thresholds=20, num_figures=None)
  REQUIRED = ('dataset',)

  def eval_set(self):
    return self.ctx.eval_set(self.cfg.dataset, self.cfg.num_examples)

  def _reduce(self, emb, batch):
    c = self.config
    return pair_maps(emb, heatmap.Options.from_config(c),
                     batch['window'] if self.cfg.advanced else None)

  def run(self, params, cache) -> base.Output:
    del cache
    ev = self.eval_set()
    runner = self.ctx.runner
    s = int(self.config.input.image_size)
    steps = runner.num_audio_steps(params)
    clip_s = int(self.config.input.audio_samples) / int(self.config.input.sample_rate)
    nbytes = -(-s * s // 8)

    def prepare(ex):
      if 'gt' not in ex:
        raise errors.DataError(
            f'config.evals.{self.name}.dataset={self.cfg.dataset!r} has no label maps: a '
            'prompted_segmentation evaluator needs a prompted set (ade20k_*_prompted or '
            'synthetic:speech_prompted / synthetic:sound_prompted)')
      out = dict(gt_bits=np.packbits(ex['gt'].reshape(-1)), prompt_class=ex['prompt_class'])
      if self.cfg.advanced:
        out['window'] = metrics_lib.advanced_windows(
            ex['prompt_start'], ex['prompt_end'], clip_s, steps, self.cfg.word_margin_s)[0]
      return out

    spec = dict(gt_bits=((nbytes,), np.uint8), prompt_class=((), np.int32))
    if self.cfg.advanced:
      spec['window'] = ((steps,), bool)
    res = runner.run(params, ev, batch_size=self.cfg.batch_size, reduce=self._reduce,
                     prepare=prepare, extra_spec=spec, gather=('gt_bits', 'prompt_class'))
    ok = res.valid
    out = {k: v[ok] for k, v in res.outputs.items()}
    gt = np.unpackbits(out['gt_bits'], axis=1, count=s * s).reshape(-1, s, s).astype(bool)
    classes = out['prompt_class']
    metrics = {}
    kinds = ('basic', 'advanced') if self.cfg.advanced else ('basic',)
    for kind in kinds:
      heat = out['heat' if kind == 'basic' else 'heat_advanced']
      pc = metrics_lib.prompted_segmentation_per_class_from_masks(
          heat, gt, classes, self.cfg.num_thresholds)
      metrics[f'{kind}_ap'] = float(np.mean(pc['ap']))
      metrics[f'{kind}_iou'] = float(np.mean(pc['iou']))
      metrics['chance_ap'] = float(np.mean(pc['chance_ap']))
    if self.config.model.num_heads > 1:
      # Each head's own basic heat map (its own min-max over the set): which head grounds
      # this set's prompts (docs/evaluation.md#per-head-segmentation).
      for k in range(out['heat_heads'].shape[1]):
        pc = metrics_lib.prompted_segmentation_per_class_from_masks(
            out['heat_heads'][:, k], gt, classes, self.cfg.num_thresholds)
        metrics[f'basic_ap_h{k}'] = float(np.mean(pc['ap']))
        metrics[f'basic_iou_h{k}'] = float(np.mean(pc['iou']))
    metrics['num_examples'] = float(ok.sum())
    figs = {}
    if self.num_figures():
      figs = self._figures(params, ev, out, gt, np.flatnonzero(ok))
    return base.Output(metrics, figs)

  # ---------------------------------------------------------------- figures
  def _figures(self, params, ev, out, gt, positions):
    """One example per class (the first of each of the first num_figures classes), drawn by
    process 0 (every process takes part in embedding their features for the PCA)."""
    k = self.num_figures()
    classes = out['prompt_class']
    _, first = np.unique(classes, return_index=True)
    pick = np.sort(first)[:k]
    feats = self.ctx.runner.features_at(params, ev, positions[pick])
    if jax.process_index() != 0:
      return {}
    heat_key = 'heat_advanced' if self.cfg.advanced else 'heat'
    lo, hi = out[heat_key].min(), out[heat_key].max()  # The metric's set-wide min-max.
    heat = (out[heat_key][pick] - lo) / max(hi - lo, 1e-12)
    heads = out['heat_heads'][pick]
    hl = heads.min(axis=(1, 2, 3), keepdims=True)
    hh = heads.max(axis=(1, 2, 3), keepdims=True)
    heads = (heads - hl) / np.maximum(hh - hl, 1e-12)
    exs = [ev.read(int(positions[i])) for i in pick]
    titles = [class_label(ev, int(classes[i])) for i in pick]
    images = np.stack([e['image'] for e in exs])
    head_names = base.head_names(self.config)
    figs = {'overlay': figures.overlay_grid(
        images, heads, heat, gt[pick], titles, head_names,
        heat_title='advanced' if self.cfg.advanced else 'basic')}
    spans = []
    for e, title in zip(exs, titles):
      if 'word_classes' in e:
        spans.append([(float(t0), float(t1), class_label(ev, int(c)))
                      for c, (t0, t1) in zip(e['word_classes'], e['word_times']) if c >= 0])
      elif float(e.get('prompt_end', 0)) > float(e.get('prompt_start', 0)):
        spans.append([(float(e['prompt_start']), float(e['prompt_end']), title)])
      else:
        spans.append([])
    sr = int(self.config.input.sample_rate)
    figs['activation'] = figures.activation_with_audio(
        out['activation'][pick], np.stack([e['audio'] for e in exs]),
        np.array([int(e['audio_len']) for e in exs]), sr, spans, titles, head_names)
    image_rgb, audio_rgb = pca.pca_rgb(feats['image'], feats['audio'])
    figs['pca'] = pca.pca_figure(images, image_rgb, audio_rgb, titles)
    return figs

