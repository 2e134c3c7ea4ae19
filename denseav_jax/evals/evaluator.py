"""Evaluation: prompted segmentation, retrieval, figures (docs/evaluation.md).

`Evaluator(config, model, mesh).evaluate(params, step, workdir, writer)` embeds each set
on the mesh (batches split over `data`), computes

  speech_prompted/{basic,advanced}_{ap,iou}, sound_prompted/basic_{ap,iou},
  retrieval/{a2i,i2a}_r{1,5,10}, and the chance level of each,

writes WORKDIR/eval/STEP/metrics.json plus PNG figures, and logs both to TensorBoard.
The sets are config.eval.speech_prompted / sound_prompted / retrieval: the synthetic
world's own, or data sets (ADE20K Speech-/Sound-Prompted, Places Audio val, AudioSet eval);
a set named '' is skipped.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from denseav_jax import sharding
from denseav_jax import sim_sharded
from denseav_jax.models import partitioning
from denseav_jax import similarity
from denseav_jax.data import pipeline
from denseav_jax.data.sources import synthetic
from denseav_jax.evals import figures
from denseav_jax.evals import metrics as metrics_lib


def aggregate_heads(vol: jax.Array, head_agg: str) -> jax.Array:
  """[B, K, ...] -> [B, ...] the way the score aggregates heads (max, or sum)."""
  return vol.sum(axis=1) if head_agg == 'sum' else vol.max(axis=1)


def word_window(start_s, end_s, clip_seconds: float, num_steps: int, margin_s: float):
  """[N] word timings -> [N, T] bool masks of steps within timing +- margin
  (docs/evaluation.md#prompted-segmentation)."""
  lo = np.floor(np.clip((start_s - margin_s) / clip_seconds, 0, 1) * num_steps).astype(int)
  hi = np.ceil(np.clip((end_s + margin_s) / clip_seconds, 0, 1) * num_steps).astype(int)
  hi = np.maximum(hi, lo + 1)
  t = np.arange(num_steps)[None]
  return (t >= lo[:, None]) & (t < hi[:, None])


class Evaluator:
  """Holds the (cached) evaluation sets and the jitted embedding functions."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, param_shardings=None):
    """`param_shardings`: the parameters' shardings (default: replicated)."""
    self.config, self.model, self.mesh = config, model, mesh
    self._sets: dict[str, dict[str, np.ndarray]] = {}
    self.synthetic = config.data.name == 'synthetic'
    self.clip_seconds = config.input.audio_samples / config.input.sample_rate
    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    p_shard = repl if param_shardings is None else param_shardings
    rules = partitioning.rules_from_config(config.get('partitioning', 'dp'))

    def embed(params, batch):
      v = {'params': params}
      with partitioning.activation_sharding(mesh, rules):
        img, img_cls = model.apply(v, batch['image'], method=model.embed_image)
        aud, aud_cls, mask = model.apply(v, batch['audio'], batch['audio_len'],
                                         method=model.embed_audio)
      return img, img_cls, aud, aud_cls, mask

    # Outputs are gathered (replicated) so every process can read whole sets.
    self._embed = jax.jit(embed, in_shardings=(p_shard, data), out_shardings=repl)
    sim = config.sim

    def retrieval_scores(params, aud, mask, img, aud_vec, img_vec):
      if sim.agg == 'simpool':
        aud_vec = model.apply({'params': params}, aud, method=model.pool)
        img_vec = model.apply({'params': params}, img, method=model.pool)
      # The N x N matrix through the same sharded operator as training; the heads are
      # scored separately and summed, as the release evaluates retrieval.
      return sim_sharded.from_config(config, mesh, aud, mask, img, aud_vec, img_vec,
                                     head_agg='sum', block=config.eval.retrieval_block)
    self._scores = jax.jit(retrieval_scores, in_shardings=(p_shard,) + (data,) * 5,
                           out_shardings=repl)

    def matched(audio_feats, image_feats):
      vol = similarity.matched_volume(audio_feats, image_feats, config.model.num_heads,
                                      sim.nonneg)  # [B, K, H, W, F, T]
      per_head = vol.mean(axis=-2)  # [B, K, H, W, T]
      return aggregate_heads(per_head, sim.head_agg), per_head
    self._matched = jax.jit(matched)

  # ------------------------------------------------------------------ data
  def eval_set(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._sets:
      n = (self.config.eval.num_retrieval if split == 'retrieval'
           else self.config.eval.num_segmentation)
      self._sets[split] = pipeline.load_eval_set(self.config, split, n)
    return self._sets[split]

  def embed_set(self, params, data: dict[str, np.ndarray]):
    """Embeds a whole set in mesh-sharded batches (the last one padded)."""
    n = len(data['image'])
    dp = sharding.data_parallel_size(self.mesh)
    bs = -(-self.config.eval.batch_size // dp) * dp
    outs = []
    for i in range(0, n, bs):
      chunk = {k: data[k][i:i + bs] for k in pipeline.MODEL_INPUTS}
      m = len(chunk['image'])
      if m < bs:  # Pad to a whole sharded batch; padded rows are dropped below.
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - m, 0)]) for k, v in chunk.items()}
      out = self._embed(params, sharding.put_batch(chunk, self.mesh))
      outs.append([np.asarray(jax.device_get(o))[:m] for o in out])
    return [np.concatenate(parts) for parts in zip(*outs)]  # image, audio, mask

  # --------------------------------------------------------------- metrics
  def _segmentation(self, params, split: str, results: dict, figs: dict):
    data = self.eval_set(split)
    img, _, aud, _, mask = self.embed_set(params, data)
    vol, per_head = map(np.asarray, self._matched(jnp.asarray(aud), jnp.asarray(img)))
    basic = similarity_masked_mean(vol, mask)  # [N, H, W]
    m = metrics_lib.prompted_segmentation_metrics(basic, data['class_map'], data['prompt_class'])
    results[f'{split}/basic_ap'] = m['ap']
    results[f'{split}/basic_iou'] = m['iou']
    results[f'{split}/chance_ap'] = m['chance_ap']
    heat = basic
    if split == 'speech_prompted':
      window = word_window(data['prompt_start'], data['prompt_end'], self.clip_seconds,
                           vol.shape[-1], self.config.eval.word_margin_s)
      adv = similarity_masked_mean(vol, window)
      m = metrics_lib.prompted_segmentation_metrics(adv, data['class_map'], data['prompt_class'])
      results[f'{split}/advanced_ap'] = m['ap']
      results[f'{split}/advanced_iou'] = m['iou']
      heat = adv
    k = self.config.eval.num_figures
    if k:
      titles = [self._word_label(int(c)) for c in data['prompt_class'][:k]]
      maps = heat[:k, None]  # [k, 1, H, W]
      if per_head.shape[1] > 1:  # Multi-head models: one overlay per head.
        maps = similarity_masked_mean_heads(per_head[:k], mask[:k])
      maps = _normalise_each(maps)
      figs[f'{split}_heatmaps'] = figures.heatmap_grid(
          data['image'][:k], maps[:, 0] if maps.shape[1] == 1 else maps, titles, cmap='jet')
      activ = vol[:k].max(axis=(1, 2))  # [k, T]: best-matching location over time.
      sr = self.config.input.sample_rate
      words = []
      if 'word_classes' in data:
        for wc, wt in zip(data['word_classes'][:k], data['word_times'][:k]):
          words.append([(float(s), float(e), self._word_label(int(c)))
                        for c, (s, e) in zip(wc, wt) if c >= 0])
      else:  # One timed prompt word (ADE20K Speech-Prompted), or none (sound).
        words = [[(float(s), float(e), t)] if e > s else []
                 for s, e, t in zip(data['prompt_start'][:k], data['prompt_end'][:k], titles)]
      figs[f'{split}_activation'] = figures.activation_over_time(
          activ, data['audio_len'][:k] / sr, words, self.clip_seconds, titles)

  def _word_label(self, c: int) -> str:
    if c <= 0:
      return '(filler)'
    return synthetic.CLASS_NAMES[c - 1] if self.synthetic else f'class {c}'

  def _retrieval(self, params, results: dict):
    data = self.eval_set('retrieval')
    embeds = self.embed_set(params, data)  # image, image CLS, audio, audio CLS, mask
    n = len(data['image'])
    dp = sharding.data_parallel_size(self.mesh)
    # Pad to a whole number of rows per device (padding rows and columns dropped below).
    shard = sharding.batch_sharding(self.mesh)
    img, img_cls, aud, aud_cls, mask = (_put_padded(x, -(-n // dp) * dp, shard)
                                        for x in embeds)
    s = np.asarray(jax.device_get(self._scores(params, aud, mask, img, aud_cls, img_cls)))
    for k, v in metrics_lib.retrieval_metrics(s[:n, :n]).items():
      results[f'retrieval/{k}'] = v

  def evaluate(self, params, step: int, workdir: str, writer=None) -> dict[str, float]:
    results: dict[str, float] = {}
    figs: dict[str, np.ndarray] = {}
    for split in ('speech_prompted', 'sound_prompted'):
      if self.config.eval.get(split):
        self._segmentation(params, split, results, figs)
    if self.config.eval.get('retrieval'):
      self._retrieval(params, results)
    results = {k: float(v) for k, v in sorted(results.items())}
    if jax.process_index() == 0:
      out = os.path.join(workdir, 'eval', str(step))
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, 'metrics.json'), 'w') as f:
        json.dump(results, f, indent=1)
      for name, fig in figs.items():
        figures.save_png(fig, os.path.join(out, f'{name}.png'))
      if writer is not None:
        writer.scalars(step, {f'eval/{k}': v for k, v in results.items()})
        for name, fig in figs.items():
          writer.image(step, f'eval/{name}', fig)
    return results


def _put_padded(x: np.ndarray, n: int, shard) -> jax.Array:
  """Replicated host array -> global array of n rows (zero-padded), sharded over the batch."""
  x = np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
  return jax.make_array_from_callback(x.shape, shard, lambda idx: x[idx])


def _normalise_each(maps: np.ndarray) -> np.ndarray:
  """Min-max normalises each example's maps [k, K, H, W] jointly over its heads (figures)."""
  lo = maps.min(axis=(1, 2, 3), keepdims=True)
  hi = maps.max(axis=(1, 2, 3), keepdims=True)
  return (maps - lo) / np.maximum(hi - lo, 1e-12)


def similarity_masked_mean(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """vol [N, H, W, T], mask [N, T] -> heat maps [N, H, W] (masked mean over time)."""
  m = mask.astype(np.float32)[:, None, None, :]
  return (vol * m).sum(-1) / np.maximum(m.sum(-1), 1e-3)


def similarity_masked_mean_heads(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-head variant: vol [N, K, H, W, T] -> [N, K, H, W]."""
  m = mask.astype(np.float32)[:, None, None, None, :]
  return (vol * m).sum(-1) / np.maximum(m.sum(-1), 1e-3)
