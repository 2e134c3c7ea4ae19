"""Tests of the built-in synthetic audio-visual world (the denseav_jax/data/synthetic/ package)."""

import dataclasses
import pickle

import numpy as np
import pytest

from denseav_jax.data.synthetic import render
from denseav_jax.data.synthetic import source
from denseav_jax.data.synthetic import speech
# Tests name their worlds `world`, so the module is renamed.
from denseav_jax.data.synthetic import world as world_lib

WORLD = world_lib.WorldConfig()
SR = WORLD.sample_rate
KEYS = {"image": (np.uint8, (64, 64, 3)), "class_map": (np.uint8, (64, 64)),
        "audio": (np.float32, (48000,)), "audio_len": (np.int32, ()), "source": (np.int32, ()),
        "prompt_class": (np.int32, ()), "prompt_start": (np.float32, ()),
        "prompt_end": (np.float32, ()), "word_classes": (np.int32, (8,)),
        "word_times": (np.float32, (8, 2)), "index": (np.int64, ())}


@pytest.fixture(scope="module")
def sources():
  return {split: source.SyntheticAVSource(split, WORLD, seed=0) for split in world_lib.SPLITS}


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_determinism(sources):
  train = sources["train"]
  fresh = source.SyntheticAVSource("train", WORLD, seed=0)
  assert _equal(train[7], train[7]) and _equal(train[7], fresh[7])
  assert not np.array_equal(train[7]["image"], train[8]["image"])
  other_seed = source.SyntheticAVSource("train", WORLD, seed=1)
  assert not np.array_equal(train[7]["image"], other_seed[7]["image"])
  assert not np.array_equal(train[7]["audio"], other_seed[7]["audio"])
  # Eval splits are fixed sets, distinct from train and from each other.
  ret = sources["retrieval"]
  assert _equal(ret[3], source.SyntheticAVSource("retrieval", WORLD)[3])
  images = [sources[s][3]["image"] for s in world_lib.SPLITS]
  assert len({im.tobytes() for im in images}) == len(images)
  assert len(ret) == 512 and len(sources["speech_prompted"]) == 256
  assert len(sources["sound_prompted"]) == 256 and len(train) == 2**31 - 1
  assert len(source.SyntheticAVSource("retrieval", WORLD, num_examples=10)) == 10
  assert _equal(ret[-1], ret[511])
  with pytest.raises(IndexError):
    ret[512]


@pytest.mark.parametrize("split,modality", [("train", "speech"), ("train", "sound"),
                                            ("train", None), ("speech_prompted", None),
                                            ("sound_prompted", None), ("retrieval", None),
                                            ("retrieval", "sound")])
def test_keys_shapes_dtypes(split, modality):
  src = source.SyntheticAVSource(split, WORLD, modality=modality)
  for i in range(3):
    ex = src[i]
    assert set(ex) == set(KEYS)
    for k, (dtype, shape) in KEYS.items():
      assert ex[k].dtype == dtype and ex[k].shape == shape, (k, ex[k].dtype, ex[k].shape)
    assert ex["index"] == i


def _check_scene(ex, world=WORLD):
  cm, img = ex["class_map"], ex["image"].astype(np.float32)
  present = set(np.unique(cm).tolist()) - {0}
  assert present and max(present) <= world.num_classes
  assert world.min_objects <= len(present) <= world.max_objects
  for c in present:
    pix = img[cm == c]
    colour = np.array(render.CLASS_STYLE[world_lib.CLASS_NAMES[c - 1]][0], np.float32)
    # Each object pixel is the class colour or its dark texture shade (plus jitter and noise).
    dist = np.minimum(np.abs(pix - colour).max(1), np.abs(pix - 0.5 * colour).max(1))
    assert np.median(dist) < world.colour_jitter + 4 * world.pixel_noise_std + 1, c
    assert len(pix) >= 4
  return present


def _check_audio(ex, sr=SR):
  audio, n = ex["audio"], int(ex["audio_len"])
  assert 0 < n <= len(audio) and np.all(audio[n:] == 0)
  wc, wt = ex["word_classes"], ex["word_times"]
  nw = int(np.sum(wc >= 0))
  assert nw >= 1 and np.all(wc[:nw] >= 0) and np.all(wc[nw:] == -1)
  assert np.all(wt[nw:] == 0)
  assert np.all(wt[:nw, 0] >= 0) and np.all(wt[:nw, 1] > wt[:nw, 0])
  assert np.all(wt[:nw, 1] <= n / sr + 1e-6)
  assert np.all(wt[1:nw, 0] >= wt[:nw - 1, 1] - 1e-6)        # in order, no overlap
  in_word = np.zeros(n, bool)
  for t0, t1 in wt[:nw]:
    seg = audio[int(round(t0 * sr)):int(round(t1 * sr))]
    in_word[int(round(t0 * sr)):int(round(t1 * sr))] = True
    assert np.abs(seg[:int(0.03 * sr)]).max() > 0 and np.abs(seg[-int(0.03 * sr):]).max() > 0
    word_power = np.mean(seg ** 2)
    assert word_power > 0
  gap = audio[:n][~in_word]
  if len(gap) > 0.05 * sr:
    # Between words there is only the low-level noise (SNR >= 20 dB).
    assert np.mean(gap ** 2) < 0.05 * np.mean(audio[:n][in_word] ** 2)
  return wc[:nw]


@pytest.mark.parametrize("modality", ["speech", "sound"])
def test_train_scene_and_caption_agree(modality):
  src = source.SyntheticAVSource("train", WORLD, modality=modality)
  for i in range(12):
    ex = src[i]
    present = _check_scene(ex)
    words = _check_audio(ex)
    assert ex["source"] == (0 if modality == "speech" else 1)
    assert ex["prompt_class"] == 0 and ex["prompt_start"] == 0 and ex["prompt_end"] == 0
    named = words[words > 0].tolist()
    assert sorted(named) == sorted(present)              # every object named exactly once
    if modality == "sound":
      assert 0 not in words


def test_fillers_occur():
  src = source.SyntheticAVSource("train", WORLD, modality="speech")
  assert any(0 in src[i]["word_classes"] for i in range(20))
  prompted = source.SyntheticAVSource("speech_prompted", WORLD)
  assert any(0 in prompted[i]["word_classes"] for i in range(10))


@pytest.mark.parametrize("split", ["speech_prompted", "sound_prompted"])
def test_prompted(sources, split):
  src = sources[split]
  for i in range(12):
    ex = src[i]
    present = _check_scene(ex)
    words = _check_audio(ex)
    c = int(ex["prompt_class"])
    assert c == i % WORLD.num_classes + 1                 # classes are balanced
    assert c in present
    assert (words > 0).sum() == 1 and c in words
    j = int(np.nonzero(ex["word_classes"] == c)[0][0])
    np.testing.assert_allclose([ex["prompt_start"], ex["prompt_end"]], ex["word_times"][j])
    assert ex["source"] == (0 if split == "speech_prompted" else 1)


def test_retrieval_names_all_objects(sources):
  for i in range(6):
    ex = sources["retrieval"][i]
    present = _check_scene(ex)
    words = _check_audio(ex)
    assert ex["source"] == 0 and sorted(words[words > 0].tolist()) == sorted(present)


def test_mixed_has_both_sources(sources):
  srcs = [int(sources["train"][i]["source"]) for i in range(24)]
  assert set(srcs) == {0, 1}


def test_grain_batches_and_pickle(sources):
  grain = pytest.importorskip("grain")
  for split in ("train", "speech_prompted"):
    ds = grain.MapDataset.source(sources[split]).batch(4)
    batch = ds[1]
    assert batch["image"].shape == (4, 64, 64, 3) and batch["audio"].shape == (4, 48000)
    assert batch["word_times"].shape == (4, 8, 2)
    np.testing.assert_array_equal(batch["index"], [4, 5, 6, 7])
  src = pickle.loads(pickle.dumps(sources["sound_prompted"]))
  assert _equal(src[2], sources["sound_prompted"][2])
  assert "sound_prompted" in repr(src)


def test_world_config_validation():
  cfg = world_lib.WorldConfig.from_dict({"image_size": 96, "object_scale": [0.25, 0.3]})
  assert cfg.image_size == 96 and cfg.object_scale == (0.25, 0.3)
  with pytest.raises(ValueError, match="bogus_knob"):
    world_lib.WorldConfig.from_dict({"bogus_knob": 1})
  for bad in [dict(num_classes=7), dict(num_classes=11), dict(min_objects=3, max_objects=2),
              dict(object_scale=(0.4, 0.3)), dict(filler_prob=1.5), dict(max_words=2),
              dict(train_voices=()), dict(speed_perturb=(1.2, 1.1)),
              dict(speed_perturb=(0.3, 1.0))]:
    with pytest.raises(ValueError):
      world_lib.WorldConfig(**bad)
  with pytest.raises(ValueError, match="audio_seconds"):
    source.SyntheticAVSource("train", world_lib.WorldConfig(audio_seconds=0.8))
  with pytest.raises(ValueError, match="klingon"):
    source.SyntheticAVSource("train", world_lib.WorldConfig(train_voices=("klingon",)))
  with pytest.raises(ValueError):
    source.SyntheticAVSource("speech_prompted", WORLD, modality="sound")
  with pytest.raises(ValueError):
    source.SyntheticAVSource("validation", WORLD)


def test_other_sizes_and_rates():
  world = world_lib.WorldConfig(image_size=160, sample_rate=8000, audio_seconds=4.0,
                                num_classes=8, max_objects=4)
  src = source.SyntheticAVSource("train", world, modality="speech", seed=3)
  for i in range(3):
    ex = src[i]
    assert ex["image"].shape == (160, 160, 3) and ex["audio"].shape == (32000,)
    present = _check_scene(ex, world)
    words = _check_audio(ex, sr=8000)
    assert sorted(words[words > 0].tolist()) == sorted(present)


def test_voices():
  from denseav_jax.tools import make_speech_clips as M
  assert WORLD.train_voices == world_lib.TRAIN_VOICES == tuple(v for v, _, _ in M.TRAIN_VOICES)
  assert (WORLD.eval_voices == world_lib.EVAL_VOICES == tuple(v for v, _, _ in M.EVAL_VOICES)
          == ("en-029",))
  assert "en-029" not in WORLD.train_voices and len(set(WORLD.train_voices)) >= 10
  # The held-out voice's accent is used by no training voice.
  assert not any(v.split("+")[0] == "en-029" for v in WORLD.train_voices)
  assert ("en-029", 155, 55) in M.EVAL_VOICES
  clips = speech.load_speech_clips()
  assert clips.voices == tuple(v for v, _, _ in M.VOICES)
  # Every training voice is used.
  src = source.SyntheticAVSource("train", WORLD, modality="speech")
  assert len(src._voice_ids) == len(WORLD.train_voices)


def test_resample_speed():
  sr = 16000
  t = np.arange(8000) / sr
  x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
  for f in (0.88, 1.0, 1.12):
    y = speech.resample_speed(x, f)
    assert y.dtype == np.float32 and len(y) == round(len(x) / f)
    crossings = np.sum(np.diff(np.sign(y)) != 0) / (len(y) / sr) / 2
    assert abs(crossings / (440 * f) - 1) < 0.01, (f, crossings)


def _word_lengths(ex, sr=SR):
  """[(class id, length in samples)] of the caption's words."""
  n = int(np.sum(ex["word_classes"] >= 0))
  return [(int(c), int(round((t1 - t0) * sr)))
          for c, (t0, t1) in zip(ex["word_classes"][:n], ex["word_times"][:n])]


def test_speed_perturb_train_only():
  clips = speech.load_speech_clips()
  v = clips.voice_index("en-us")
  ratios = {}
  for sp in ((1.0, 1.0), (0.88, 1.12), (1.1, 1.1)):
    world = world_lib.WorldConfig(train_voices=("en-us",), speed_perturb=sp)
    src = source.SyntheticAVSource("train", world, modality="speech", seed=2)
    r = []
    for i in range(10):
      ex = src[i]
      _check_audio(ex)
      r += [clips.length(v, c - 1) / n for c, n in _word_lengths(ex) if c > 0]
      assert _equal(ex, src[i])                          # still deterministic
    ratios[sp] = np.array(r)
  np.testing.assert_allclose(ratios[(1.0, 1.0)], 1.0, atol=1e-3)
  np.testing.assert_allclose(ratios[(1.1, 1.1)], 1.1, atol=2e-3)
  r = ratios[(0.88, 1.12)]
  assert r.min() >= 0.88 - 2e-3 and r.max() <= 1.12 + 2e-3
  assert r.max() - r.min() > 0.08                         # words really vary
  # The default world perturbs training speech.
  assert world_lib.WorldConfig().speed_perturb == (0.88, 1.12)


@pytest.mark.parametrize("split,modality", [("speech_prompted", None), ("sound_prompted", None),
                                            ("retrieval", None), ("retrieval", "mixed")])
def test_eval_splits_ignore_train_augmentation(split, modality):
  ref = source.SyntheticAVSource(split, WORLD, modality=modality)
  others = [source.SyntheticAVSource(split, world_lib.WorldConfig(speed_perturb=sp),
                                     modality=modality)
            for sp in ((1.0, 1.0), (0.8, 1.25))]
  others.append(source.SyntheticAVSource(split, world_lib.WorldConfig(train_voices=("en-gb",)),
                                         modality=modality))
  for i in (0, 1, 5, len(ref) - 1):
    ex = ref[i]
    assert all(_equal(ex, o[i]) for o in others)


def test_speech_clips_asset(monkeypatch, tmp_path):
  clips = speech.load_speech_clips()
  assert clips.words[:10] == world_lib.CLASS_NAMES
  assert set(world_lib.FILLER_WORDS) <= set(clips.words)
  assert set(WORLD.train_voices + WORLD.eval_voices) <= set(clips.voices)
  assert not set(WORLD.train_voices) & set(WORLD.eval_voices)
  lens = np.diff(clips.offsets) / clips.sample_rate
  assert lens.min() > 0.1 and lens.max() < 0.8
  # A missing asset tells the user how to make it.
  monkeypatch.setattr(speech, "SPEECH_CLIPS_PATH", str(tmp_path / "missing.npz"))
  speech.load_speech_clips.cache_clear()
  try:
    with pytest.raises(FileNotFoundError, match="make_speech_clips"):
      speech.load_speech_clips()
  finally:
    speech.load_speech_clips.cache_clear()


def test_package_imports_run_one_way():
  """Each module imports only the modules its package docstring lists above it (no cycles)."""
  import ast
  import os
  import denseav_jax.data.synthetic as package
  order = ["world", "speech", "render", "sound", "layout", "example", "source", "preview"]
  folder = os.path.dirname(package.__file__)
  assert sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py")) == sorted(
      order + ["__init__"])
  for i, name in enumerate(order):
    assert f"\n  {name} " in package.__doc__
    tree = ast.parse(open(os.path.join(folder, name + ".py")).read())
    used = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and n.module == "denseav_jax.data.synthetic" for a in n.names}
    assert used <= set(order[:i]), (name, used - set(order[:i]))


@pytest.mark.subprocess
def test_preview_command_writes_png(tmp_path):
  import subprocess
  import sys
  from PIL import Image
  from conftest import subprocess_env
  out = subprocess.run(
      [sys.executable, "-m", "denseav_jax.tools.synthetic_preview", "--out_dir", str(tmp_path),
       "--num_examples", "5", "--notiming"], env=subprocess_env(), capture_output=True,
      text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  png = tmp_path / "synthetic_preview.png"
  with Image.open(png) as im:
    # Two rows of four tiles (the last row padded): image | class map over a spectrogram.
    assert im.size == (4 * (4 * 64 + 4), 2 * (2 * 64 + 48 + 4)) and im.mode == "RGB"
  lines = (tmp_path / "synthetic_preview.txt").read_text().splitlines()
  assert len(lines) == 5 and sum("prompt=" in l for l in lines) == 3
  assert "wrote" in out.stdout
  usage = subprocess.run([sys.executable, "-m", "denseav_jax.tools.synthetic_preview", "--help"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert usage.returncode == 0 and "--out_dir" in usage.stdout and "--config" in usage.stdout
