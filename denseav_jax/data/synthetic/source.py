"""The synthetic world as data sources: a Grain source by split, and the registered one.

``SyntheticAVSource`` follows Grain's RandomAccessDataSource protocol over one split of a
world::

    src = SyntheticAVSource("train", WorldConfig(), seed=0)          # endless, mixed speech/sound
    ds = grain.MapDataset.source(src).batch(10)
    evals = SyntheticAVSource("speech_prompted", WorldConfig())      # 256 fixed examples

``SyntheticSource`` is the same world behind the interface of ``denseav_jax.data.sources``
(``config.data.name = 'synthetic'``), its world built from a run config by ``world_config``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from denseav_jax.data.synthetic import example
from denseav_jax.data.synthetic import layout
from denseav_jax.data.synthetic import speech
# The sources' `world` argument and attribute are the public API, so the module is renamed.
from denseav_jax.data.synthetic import world as world_lib


class SyntheticAVSource:
  """grain RandomAccessDataSource over the synthetic world.

  Splits:
    'train'            endless (len 2**31-1); speech, sound or mixed (P(speech)=speech_prob)
                       captions naming every object; train voices; spoken words are speed
                       perturbed (WorldConfig.speed_perturb).
    'speech_prompted'  fixed set (default 256): one spoken prompt (maybe wrapped in fillers,
                       e.g. "there is a ball") naming one object of the scene; eval voices.
    'sound_prompted'   fixed set (default 256): the sound of one object of the scene.
    'retrieval'        fixed set (default 512) of caption/image pairs (speech by default;
                       modality='sound'/'mixed' gives sound/mixed captions); eval voices.
  Prompt classes cycle through all classes (prompt_class = index % num_classes + 1).
  Evaluation splits never use the training augmentation: their examples do not depend on
  speed_perturb or train_voices.

  Each example (same keys/dtypes for every split):
    image uint8 [S, S, 3]; class_map uint8 [S, S] (0 background, c+1 for world.CLASS_NAMES[c]);
    audio float32 [L] raw waveform, zero after audio_len; audio_len int32 [];
    source int32 [] (0 speech, 1 sound); prompt_class int32 [] (0 if n/a);
    prompt_start / prompt_end float32 [] seconds (0 if n/a);
    word_classes int32 [W] (class id, 0 for filler words, -1 padding);
    word_times float32 [W, 2] [start, end] seconds (0 padding); index int64 [].
  """

  def __init__(self, split: str, world: world_lib.WorldConfig | None = None, seed: int = 0,
               modality: str | None = None, num_examples: int | None = None):
    if split not in world_lib.SPLITS:
      raise ValueError(f"unknown split {split!r}; choose one of {sorted(world_lib.SPLITS)}")
    world = world if world is not None else world_lib.WorldConfig()
    if not isinstance(world, world_lib.WorldConfig):
      raise TypeError(f"world must be a WorldConfig, got {type(world).__name__}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    defaults = {"train": "mixed", "retrieval": "speech", "speech_prompted": "speech",
                "sound_prompted": "sound"}
    modality = modality or defaults[split]
    if modality not in world_lib.MODALITIES:
      raise ValueError(f"modality must be one of {world_lib.MODALITIES}, got {modality!r}")
    if split.endswith("_prompted") and modality != defaults[split]:
      raise ValueError(f"split {split!r} is {defaults[split]}-only, got modality={modality!r}")
    if split == "train":
      length = world_lib.TRAIN_LENGTH if num_examples is None else int(num_examples)
    else:
      length = world_lib.DEFAULT_NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    if not 1 <= length <= world_lib.TRAIN_LENGTH:
      raise ValueError(f"num_examples must be in [1, {world_lib.TRAIN_LENGTH}], got {num_examples}")
    self.split, self.world, self.seed = split, world, int(seed)
    self.modality, self._length = modality, length
    clips = speech.load_speech_clips(world.sample_rate)
    voices = world.train_voices if split == "train" else world.eval_voices
    self._voice_ids = tuple(clips.voice_index(v) for v in voices)
    layout.check_fits(world, clips)

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    return (f"SyntheticAVSource(split={self.split!r}, modality={self.modality!r}, "
            f"seed={self.seed}, len={self._length}, world={self.world!r})")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f"index {index} out of range for {self.split!r} (len {self._length})")
    return example.make_example(self.world, self.split, self.seed, index, self.modality,
                                self._voice_ids)


# ------------------------------------------------------------------------------------------------
# The registered data source (config -> SyntheticAVSource)
# ------------------------------------------------------------------------------------------------


def world_config(config) -> world_lib.WorldConfig:
  """The world of a run config: config.data.world plus the model's input geometry."""
  world = dict(config.data.world)
  for key in ("image_size", "sample_rate", "audio_seconds"):
    if key in world:
      raise ValueError(f"config.data.world.{key} is set by config.input (image_size, "
                       "sample_rate, audio_samples): remove it from data.world")
  world.update(image_size=int(config.input.image_size),
               sample_rate=int(config.input.sample_rate),
               audio_seconds=int(config.input.audio_samples) / int(config.input.sample_rate))
  return world_lib.WorldConfig.from_dict(world)


class SyntheticSource:
  """The synthetic world through the data-source interface of `denseav_jax.data.sources`.

  `read(index, rng)` returns the world's example with the audio cut to its valid length
  (the pipeline pads it back); `rng` is unused, the world being a function of (seed, index).
  The training split is endless and already random, so the pipeline reads it in order.
  """

  name = "synthetic"
  source_label = 0

  def __init__(self, config, split: str, num_examples: int | None = None,
               modality: str | None = None):
    if split == "train":
      modality = config.data.modality
    self.split = split
    self.shuffle = split != "train"
    self.world = SyntheticAVSource(split, world_config(config), seed=config.seed,
                                   modality=modality, num_examples=num_examples)

  def __len__(self) -> int:
    return len(self.world)

  def where(self, index: int) -> str:
    return f"synthetic/{self.split} #{index}"

  def record(self, index: int) -> dict[str, Any]:
    return self.world[index]

  def read(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    del rng
    ex = dict(self.world[index])
    ex["audio"] = ex["audio"][:int(ex["audio_len"])]
    return ex

  def audio(self, index: int) -> np.ndarray:
    ex = self.world[index]
    return ex["audio"][:int(ex["audio_len"])]

