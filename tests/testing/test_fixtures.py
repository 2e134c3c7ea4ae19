"""Fast checks of the on-disk data-set fixtures themselves (denseav_jax.testing.fixtures)."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from denseav_jax.testing import fixtures as fx

CLIP = 164200


def _read_audio(path):
  return sf.read(path, dtype="float32", always_2d=True)


def _read_image(path):
  return np.asarray(Image.open(path).convert("RGB"))


def _undecodable_image(path):
  try:
    Image.open(path).convert("RGB")
  except (OSError, Image.UnidentifiedImageError):  # cut JPEG: OSError; garbage: Unidentified
    return True
  return False


def _check_audio_fault(e):
  path, status = e.files["audio"], e.status
  assert e.audio is None
  if status == "missing_audio":
    assert not os.path.exists(path)
  elif status == "empty_audio":
    assert os.path.getsize(path) == 0
    with pytest.raises(sf.LibsndfileError):
      _read_audio(path)
  elif status == "bad_audio":
    assert os.path.getsize(path) > 0
    with pytest.raises(sf.LibsndfileError):
      _read_audio(path)
  elif status == "truncated_audio":
    assert e.sample_rate > 0
    try:  # wav/mp3/ogg: fewer frames, silently; flac: "flac decoder lost sync"
      y, _ = _read_audio(path)
    except sf.LibsndfileError:
      return
    assert len(y) < 0.6 * e.meta["audio_frames"]


def _check_common_faults(entries):
  for e in entries:
    if e.status in fx.AUDIO_GONE:
      _check_audio_fault(e)
    elif e.status == "short_audio":
      y, sr = _read_audio(e.files["audio"])
      np.testing.assert_array_equal(y, e.audio)
      assert 16000 * len(y) / sr / CLIP < 0.04
    elif e.status == "missing_image":
      assert not os.path.exists(e.files["image"])
      assert e.image is None
    elif e.status == "bad_image" and "image" in e.files:
      assert _undecodable_image(e.files["image"]) and e.image is None


@pytest.fixture(scope="module")
def places(tmp_path_factory):
  return fx.places_audio(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def audioset(tmp_path_factory):
  return fx.audioset(str(tmp_path_factory.mktemp("data")), num_train=5, num_val=2,
                     seconds=(1.0, 1.5))


def test_places_metadata_and_truth(places):
  base = os.path.join(places.root, "PlacesAudio_400k_distro")
  for split in ("train", "val"):
    with open(os.path.join(base, "metadata", f"{split}.json")) as f:
      meta = json.load(f)
    assert set(meta) == {"image_base_path", "audio_base_path", "data"}
    entries = places.entries[split]
    assert [d["wav"] for d in meta["data"]] == [e.meta["wav"] for e in entries]
    assert len(places.ok(split)) == {"train": 10, "val": 5}[split]
    for d, e in zip(meta["data"], entries):
      assert {"uttid", "speaker", "asr_text", "wav", "image"} <= set(d)
      assert e.id == d["wav"][len("wavs/"):-len(".wav")]
      assert e.files["audio"] == os.path.join(base, d["wav"])
      assert e.files["image"] == os.path.join(places.root, "places_subset", d["image"])
    for e in places.ok(split):
      y, sr = _read_audio(e.files["audio"])
      assert sr == e.sample_rate and y.dtype == np.float32
      np.testing.assert_array_equal(y, e.audio)
      assert np.abs(y).max() <= 0.8
      np.testing.assert_array_equal(_read_image(e.files["image"]), e.image)
  ok = places.ok("train")
  assert {e.sample_rate for e in ok} >= {16000, 22050, 44100, 8000}
  stereo = [e for e in ok if e.audio.shape[1] == 2]
  assert stereo and all(np.abs(e.audio[:, 0] - e.audio[:, 1]).max() > 0.05 for e in stereo)
  assert max(len(e.audio) / e.sample_rate for e in ok) > 10.3
  assert {e.image.shape[:2] for e in ok} >= {(256, 256), (240, 320), (300, 200)}
  assert sum(Image.open(e.files["image"]).mode == "L" for e in ok) == 1


def test_places_alignments(places):
  meta_dir = os.path.join(places.root, "PlacesAudio_400k_distro", "metadata")
  with open(os.path.join(meta_dir, "word-alignment-train.json")) as f:
    train = {r["id"]: r for r in json.load(f)}
  with open(os.path.join(meta_dir, "word-alignment-val.csv"), newline="") as f:
    reader = csv.reader(f)
    assert next(reader) == ["", "id", "word", "start", "end"]
    val = {}
    for i, (idx, eid, word, start, end) in enumerate(reader):
      assert int(idx) == i
      r = val.setdefault(eid, {"word": [], "start": [], "end": []})
      r["word"].append(word), r["start"].append(float(start)), r["end"].append(float(end))
  for split, records in (("train", train), ("val", val)):
    entries = places.entries[split]
    ids = {e.id for e in entries}
    assert set(records) - ids  # an alignment for an id not in the metadata
    assert any(not e.meta["words"] for e in entries)  # an entry without alignment
    for e in entries:
      if not e.meta["words"]:
        assert e.id not in records
        continue
      r = records[e.id]
      assert (r["word"], r["start"], r["end"]) == (e.meta["words"], e.meta["starts"],
                                                   e.meta["ends"])
      dur = e.meta["audio_frames"] / (e.sample_rate or 16000)
      assert all(0 <= s < t <= dur for s, t in zip(r["start"], r["end"]))


def test_places_faults(places):
  for split in ("train", "val"):
    statuses = [e.status for e in places.entries[split]]
    assert sorted(s for s in statuses if s != "ok") == sorted(fx.PLACES_FAULTS)
    _check_common_faults(places.entries[split])
  details = {e.meta["fault"] for s in ("train", "val") for e in places.entries[s]
             if e.status == "bad_image"}
  assert details == {"jpeg cut to 30%", "random bytes"}


def test_places_no_faults_and_determinism(tmp_path):
  a = fx.places_audio(str(tmp_path / "a"), num_train=3, num_val=1, faults=False, seconds=(1, 2))
  b = fx.places_audio(str(tmp_path / "b"), num_train=3, num_val=1, faults=False, seconds=(1, 2))
  assert all(e.status == "ok" for es in a.entries.values() for e in es)
  for ea, eb in zip(a.entries["train"], b.entries["train"]):
    assert ea.id == eb.id
    np.testing.assert_array_equal(ea.audio, eb.audio)
  c = fx.places_audio(str(tmp_path / "a"), num_train=3, num_val=1, faults=["bad_audio"] * 2,
                      seed=1, seconds=(1, 2))
  assert [e.status for e in c.entries["val"]].count("bad_audio") == 2
  os.makedirs(tmp_path / "real" / "places_subset")
  with pytest.raises(FileExistsError):
    fx.places_audio(str(tmp_path / "real"), num_train=1, num_val=1)


def _audioset_rows(path, distributed):
  with open(path, newline="") as f:
    lines = f.read().splitlines()
  if distributed:
    assert [l.startswith("#") for l in lines[:3]] == [True] * 3
    header = [c.strip() for c in lines[2][1:].split(",")]
    body = lines[3:]
  else:
    header, body = lines[0].split(","), lines[1:]
    assert not any(", " in l.split('"')[0] for l in body)
  assert header == ["YTID", "start_seconds", "end_seconds", "positive_labels"]
  return list(csv.reader(body, skipinitialspace=True))


def test_audioset_layout_and_truth(audioset):
  classes = None
  for split, name, csv_name in (("train", "audioset-raw", "unbalanced_train_segments.csv"),
                                ("val", "audioset-eval", "eval_segments_subset.csv")):
    folder = os.path.join(audioset.root, name)
    with open(os.path.join(folder, "metadata", "class_labels_indices.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(527))
    mids = {r["mid"]: int(r["index"]) for r in rows}
    assert len(mids) == 527 and rows[1]["display_name"] == "Male speech, man speaking"
    classes = classes or rows
    assert rows == classes
    body = _audioset_rows(os.path.join(folder, "metadata", csv_name), split == "train")
    entries = audioset.entries[split]
    assert len(body) == len(entries)
    for (ytid, start, end, labels), e in zip(body, entries):
      assert len(ytid) == 11 and e.id == f"{ytid}_{float(start)}_{float(end)}"
      known = sorted(mids[m] for m in labels.split(",") if m in mids)
      assert known == e.meta["tags"]
      assert (e.status == "unknown_label") == (len(known) < len(labels.split(",")))
      frame_paths = [e.files[f"frame_{k}"] for k in range(10)]
      assert frame_paths == ([os.path.join(folder, "frames", f"frame_{k}", f"{e.id}.jpg")
                              for k in range(10)] if split == "train" else
                             [os.path.join(folder, "frames", f"{e.id}_{k}.jpg") for k in range(10)])
      assert e.files["audio"] == os.path.join(folder, "audio", f"{e.id}.mp3")
    for e in audioset.ok(split):
      y, sr = _read_audio(e.files["audio"])
      assert sr == e.sample_rate
      np.testing.assert_array_equal(y, e.audio)
      frames = [_read_image(e.files[f"frame_{k}"]) for k in range(10)]
      for got, want in zip(frames, e.frames):
        np.testing.assert_array_equal(got, want)
      assert np.all(np.diff([f.mean() for f in frames]) > 5)  # frame k is brighter than k-1
  ids = [e.id for es in audioset.entries.values() for e in es]
  assert any(i.startswith("-") for i in ids)
  assert any("." in i.split("_")[-2] and not i.split("_")[-2].endswith(".0") for i in ids)
  ok = audioset.ok("train")
  assert {(e.sample_rate, e.audio.shape[1]) for e in ok} == {(44100, 2), (48000, 1)}
  stereo = [e for e in ok if e.sample_rate == 44100]
  assert all(np.abs(e.audio[:, 0] - e.audio[:, 1]).max() > 0.05 for e in stereo)


def test_audioset_faults(audioset):
  train = [e.status for e in audioset.entries["train"]]
  assert sorted(s for s in train if s != "ok") == sorted(fx.AUDIOSET_FAULTS)
  assert [e.status for e in audioset.entries["val"] if e.status != "ok"] == ["unknown_label"]
  for split in ("train", "val"):
    _check_common_faults(audioset.entries[split])
    for e in audioset.entries[split]:
      present = [os.path.exists(e.files[f"frame_{k}"]) for k in range(10)]
      if e.status == "missing_frame":
        assert present.count(False) == 1 and not present[e.meta["bad_frame"]]
        assert e.frames[e.meta["bad_frame"]] is None
      else:
        assert all(present)
      if e.status == "bad_image":
        assert _undecodable_image(e.files[f"frame_{e.meta['bad_frame']}"])
      if e.status == "unknown_label":
        assert fx.UNKNOWN_MID in e.meta["positive_labels"].split(",")


@pytest.mark.parametrize("kind", ["speech", "sound"])
def test_ade20k_prompted(tmp_path, kind):
  fix = fx.ade20k_prompted(str(tmp_path), kind, num=6)
  folder = os.path.join(fix.root, {"speech": "ADE20KSpeechPrompted",
                                   "sound": "ADE20KSoundPrompted"}[kind])
  with open(os.path.join(folder, "prompted_segmentation.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  entries = fix.entries["val"]
  assert len(rows) == len(entries) and len(fix.ok("val")) == 6
  assert sorted(e.status for e in entries if e.status != "ok") == sorted(fx.ADE_FAULTS)
  col = {"speech": "speech_prompt_file", "sound": "vggsound_file"}[kind]
  for r, e in zip(rows, entries):
    assert r["image_location"] == e.meta["image_location"] and r[col] == e.meta["prompt_file"]
    assert int(r["ade_class_id"]) == e.meta["class_id"]
    assert e.files["image"] == os.path.join(folder, "frames", r["image_location"])
    assert e.files["label"] == os.path.join(
        folder, "annotations", r["image_location"].replace(".jpg", "_seg.png"))
    assert (r[col] == "") == (e.status == "no_prompt")
    assert (r["ade_class_id"] == "0") == (e.status == "class_zero")
    if r[col]:
      assert e.files["audio"] == os.path.join(folder, "audio", os.path.basename(r[col]))
      assert os.path.dirname(r[col])
    if kind == "speech" and e.status == "ok":
      assert json.loads(r["timing"]) == e.meta["timing"]
      start, end = e.meta["timing"]
      assert 0 <= start < end <= len(e.audio) / 16000
  assert len({r["image_location"] for r in rows}) < len(rows)  # images shared by rows
  for e in entries:
    rgb = np.asarray(Image.open(e.files["label"]))
    label = (rgb[..., 0].astype(np.int32) // 10) * 256 + rgb[..., 1]
    np.testing.assert_array_equal(label, e.label)
    if e.status == "label_size":
      assert label.shape != np.asarray(Image.open(e.files["image"])).shape[:2]
    elif e.image is not None:
      assert label.shape == e.image.shape[:2]
      np.testing.assert_array_equal(_read_image(e.files["image"]), e.image)
    if e.status == "ok":
      assert (label == e.meta["class_id"]).mean() > 0.01
      assert len(np.unique(label)) >= 3
      y, sr = _read_audio(e.files["audio"])
      assert sr == e.sample_rate
      np.testing.assert_array_equal(y, e.audio)
  ok = fix.ok("val")
  assert any(e.label.max() > 255 for e in ok)
  assert any(np.any(np.asarray(Image.open(e.files["label"]))[..., 0] % 10) for e in ok)
  if kind == "sound":
    assert {os.path.splitext(e.files["audio"])[1] for e in ok} == {".wav", ".flac", ".ogg"}
    assert len({e.sample_rate for e in ok}) == 3 and any(e.audio.shape[1] == 2 for e in ok)
  else:
    assert all(e.sample_rate == 16000 and e.audio.shape[1] == 1 for e in ok)
  _check_common_faults(entries)
  for e in entries:
    if e.status == "bad_image":
      assert _undecodable_image(e.files["image"])


def test_ade20k_missing(tmp_path):
  fix = fx.ade20k_prompted(str(tmp_path), "speech", num=2, faults=False, missing=True)
  assert sorted(e.status for e in fix.entries["val"]) == ["missing_audio", "missing_image", "ok",
                                                          "ok"]
  _check_common_faults(fix.entries["val"])
