"""One example of the synthetic world: a scene and a caption that names what is in it.

``make_example`` draws the scene's classes, renders it, picks speech or sound and a voice,
builds the caption (the names, maybe with filler words, or the objects' sounds) and lays it
out, all from one generator seeded by (seed, split, index): an example is a pure function of
its arguments. Its keys are listed in ``source.SyntheticAVSource``. ``describe`` says in one
line what an example shows and says.
"""

from __future__ import annotations

import numpy as np

from denseav_jax.data.synthetic import layout
from denseav_jax.data.synthetic import render
from denseav_jax.data.synthetic import sound
from denseav_jax.data.synthetic import speech
from denseav_jax.data.synthetic import world


def make_example(w: world.WorldConfig, split: str, seed: int, index: int, modality: str,
                 voice_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Example `index` of `split`: a pure function of its arguments."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, world.SPLITS[split], index]))
  clips = speech.load_speech_clips(w.sample_rate)
  n_obj = int(rng.integers(w.min_objects, w.max_objects + 1))
  prompted = split.endswith("_prompted")
  if prompted:
    prompt_class = index % w.num_classes + 1
    others = np.delete(np.arange(1, w.num_classes + 1), prompt_class - 1)
    classes = np.concatenate([[prompt_class], rng.choice(others, n_obj - 1, replace=False)])
    classes = rng.permutation(classes)
  else:
    prompt_class = 0
    classes = rng.choice(w.num_classes, n_obj, replace=False) + 1
  image, class_map = render.render_scene(rng, w, classes)

  if modality == "mixed":
    is_speech = rng.random() < w.speech_prob
  else:
    is_speech = modality == "speech"
  voice = voice_ids[int(rng.integers(len(voice_ids)))]
  if prompted:
    named = [prompt_class]
  else:
    named = list(rng.permutation(classes))

  if is_speech:
    words, word_cls, droppable = [], [], []
    if prompted and rng.random() < w.prompt_filler_prob:
      before, after = world.PROMPT_TEMPLATES[int(rng.integers(len(world.PROMPT_TEMPLATES)))]
    else:
      before, after = (), ()
    for c in named:
      if not prompted and rng.random() < w.filler_prob:
        before = (world.FILLER_WORDS[int(rng.integers(len(world.FILLER_WORDS)))],)
      for f in before:
        words.append(f), word_cls.append(0), droppable.append(not prompted)
      words.append(world.CLASS_NAMES[c - 1]), word_cls.append(int(c)), droppable.append(False)
      before = ()
    for f in after:
      words.append(f), word_cls.append(0), droppable.append(False)
    segments = speech.word_clips(clips, voice, words)
    if split == "train" and w.speed_perturb != (1.0, 1.0):
      factors = rng.uniform(*w.speed_perturb, len(segments))
      segments = [speech.resample_speed(seg, f) for seg, f in zip(segments, factors)]
  else:
    segments = [sound.synth_sound(int(c), rng, w.sample_rate) for c in named]
    word_cls, droppable = [int(c) for c in named], [False] * len(named)
  audio, audio_len, word_classes, word_times = layout.lay_out(rng, w, segments, word_cls,
                                                              droppable)

  prompt_start = prompt_end = 0.0
  if prompted:
    j = int(np.nonzero(word_classes == prompt_class)[0][0])
    prompt_start, prompt_end = word_times[j]
  return {
      "image": image,
      "class_map": class_map,
      "audio": audio,
      "audio_len": np.int32(audio_len),
      "source": np.int32(0 if is_speech else 1),
      "prompt_class": np.int32(prompt_class),
      "prompt_start": np.float32(prompt_start),
      "prompt_end": np.float32(prompt_end),
      "word_classes": word_classes,
      "word_times": word_times,
      "index": np.int64(index),
  }


def describe(example: dict[str, np.ndarray]) -> str:
  """One line: the objects in the scene and what the caption says (fillers shown as '_')."""
  present = sorted(set(np.unique(example["class_map"]).tolist()) - {0})
  kind = "speech" if int(example["source"]) == 0 else "sound"
  names = world.CLASS_NAMES
  words = []
  for c, (t0, t1) in zip(example["word_classes"], example["word_times"]):
    if c < 0:
      break
    words.append(f"{'_' if c == 0 else names[c - 1]}@{t0:.2f}-{t1:.2f}")
  prompt = ""
  if example["prompt_class"] > 0:
    prompt = f" prompt={names[example['prompt_class'] - 1]}"
  return (f"#{int(example['index'])} objects={[names[c - 1] for c in present]} {kind}: "
          f"{' '.join(words)} (audio_len {int(example['audio_len'])}){prompt}")

