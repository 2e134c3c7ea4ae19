"""Small, faithful on-disk copies of the real DenseAV data-set layouts, for tests and benchmarks.

Each generator writes, under ``root`` (the folder that holds all data-set folders), a few
examples laid out exactly as the real distribution lays them out, odd corners included, and
returns a ``Fixture`` whose ``Entry`` objects hold the ground truth of what was written:

* ``places_audio``: ``PlacesAudio_400k_distro/`` (metadata/{train,val}.json, wavs/<d>/
  utterance_<n>.wav, word alignments as a JSON list (train) and a pandas-style CSV (val)) and its
  sibling ``places_subset/<letter>/<category>/<name>.jpg``.  Audio is speech-like (syllable
  bursts of harmonic tones), mostly 16 kHz mono PCM-16, some 22.05/44.1/8 kHz, some stereo with
  different channels; images are mostly 256x256 JPEGs, some non-square, one grayscale.
* ``audioset``: ``audioset-raw/`` (AudioSet's distributed ``unbalanced_train_segments.csv`` with
  its three ``#`` lines and ", " separators, audio/{id}.mp3, frames/frame_{k}/{id}.jpg) and
  ``audioset-eval/`` (plain-CSV ``eval_segments_subset.csv``, frames/{id}_{k}.jpg).  Frame k is
  brighter than frame k-1 (and its square sits further right), so "which frame" is testable.
* ``ade20k_prompted``: ``ADE20KSpeechPrompted/`` or ``ADE20KSoundPrompted/`` with
  prompted_segmentation.csv, frames/validation/*.jpg, annotations/validation/*_seg.png label
  maps (class = (R // 10) * 256 + G) and audio/<basename of the prompt cell>.

Faults (``Entry.status``) are planted on entries of their own and kept in the metadata, as a
damaged real copy would have them: missing_audio, missing_image, missing_frame, empty_audio,
truncated_audio, bad_audio, bad_image, short_audio, unknown_label, label_size, no_prompt,
class_zero.  ``faults`` is True (the generator's default set, one of each), False, a sequence of
kind names (repeats allowed) or a {kind: count} dict.  ``Entry.audio`` is None when the audio is
missing/empty/truncated/garbage (a short clip keeps its truth); ``Entry.image`` is None for a
missing or bad image; a missing or bad AudioSet frame is None inside ``Entry.frames``.

Everything is deterministic in ``seed``.  A generator refuses to overwrite a folder it did not
write itself (it marks its folders with a ``.denseav_fixture`` file).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
from PIL import Image

from denseav_jax.testing import fixture_media as media

MARKER = media.MARKER
AUDIO_GONE = ("missing_audio", "empty_audio", "truncated_audio", "bad_audio")  # audio truth None
FILE_FAULTS = AUDIO_GONE + ("missing_image", "missing_frame", "bad_image")
PLACES_FAULTS = ("missing_audio", "missing_image", "empty_audio", "truncated_audio", "bad_audio",
                 "bad_image", "short_audio")
AUDIOSET_FAULTS = ("missing_audio", "missing_frame", "empty_audio", "truncated_audio",
                   "bad_audio", "bad_image", "short_audio", "unknown_label")
ADE_FAULTS = ("no_prompt", "class_zero", "label_size", "empty_audio", "truncated_audio",
              "bad_audio", "bad_image", "short_audio")
ADE_MISSING = ("missing_audio", "missing_image")
SHORT_SECONDS = 0.25


@dataclasses.dataclass
class Entry:
  id: str
  split: str
  status: str
  files: dict[str, str]
  sample_rate: int = 0
  audio: np.ndarray | None = None
  image: np.ndarray | None = None
  frames: list[np.ndarray | None] | None = None
  label: np.ndarray | None = None
  meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Fixture:
  root: str
  entries: dict[str, list[Entry]]

  def ok(self, split: str) -> list[Entry]:
    return [e for e in self.entries[split] if e.status == "ok"]


# ----------------------------------------------------------------------------- Places Audio

PLACES_CATEGORIES = ("b/beach", "b/bedroom", "k/kitchen", "a/airport_terminal",
                     "a/apartment_building/outdoor", "c/coast", "f/forest_path", "l/living_room",
                     "m/mountain", "s/skyscraper", "h/highway", "r/restaurant")
PLACES_WORDS = ("a", "the", "there", "is", "are", "with", "and", "of", "in", "on", "beach",
                "people", "sand", "water", "kitchen", "table", "chair", "sky", "tree", "building",
                "road", "car", "window", "white", "blue", "large", "small", "picture", "room",
                "mountain", "grass", "it's")
_ALNUM = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def _places_entry(rng, base, images, split, status, v, utt, seconds, sizes, bad_variant):
  """One Places entry; v is the OK index (variants by v % 10 / v % 6) or -1 for faulty ones."""
  wav = f"wavs/{int(rng.integers(0, 40))}/utterance_{utt}.wav"
  image_rel = f"{PLACES_CATEGORIES[int(rng.integers(len(PLACES_CATEGORIES)))]}/gsun_" \
              f"{rng.bytes(16).hex()}.jpg"
  sr, channels = {3: (22050, 1), 5: (44100, 2), 7: (8000, 1), 8: (16000, 2)}.get(v % 10, (16000, 1))
  if v < 0:
    sr, channels = 16000, 1
  lo, hi = seconds
  dur = SHORT_SECONDS if status == "short_audio" else (
      max(hi, 10.8) if v == 1 else float(rng.uniform(lo, hi)))
  x, words, starts, ends = media.speech(rng, sr, dur, PLACES_WORDS)
  if channels == 2:  # a second, different voice on channel 1
    x = np.stack([x, 0.6 * media.speech(rng, sr, dur, PLACES_WORDS)[0]], 1)
  else:
    x = x[:, None]
  files = {"audio": os.path.join(base, wav), "image": os.path.join(images, image_rel)}
  audio, rate, adetail = media.emit_audio(files["audio"], x, sr, "wav", status, rng)
  if sizes:
    w, h = sizes[max(v, 0) % len(sizes)]
  else:
    w, h = {2: (320, 240), 4: (200, 300)}.get(v % 6, (256, 256)) if v >= 0 else (256, 256)
  img = media.natural_image(rng, int(w), int(h), gray=(v == 3))
  image, idetail = media.emit_image(files["image"], img, status, rng, bad_variant)
  speaker = "A" + "".join(rng.choice(_ALNUM, 13))
  aligned = v != 2
  meta = {"wav": wav, "image": image_rel, "words": words if aligned else [],
          "starts": starts if aligned else [], "ends": ends if aligned else [],
          "uttid": f"{speaker}-GSUN_{rng.bytes(16).hex().upper()}", "speaker": speaker,
          "asr_text": " ".join(words), "audio_frames": x.shape[0], "fault": adetail or idetail}
  return Entry(id=wav[len("wavs/"):-len(".wav")], split=split, status=status, files=files,
               sample_rate=rate, audio=audio, image=image, meta=meta)


def _write_places_metadata(base, split, entries, rng, orphan_id):
  data = [{"uttid": e.meta["uttid"], "speaker": e.meta["speaker"], "asr_text": e.meta["asr_text"],
           "wav": e.meta["wav"], "image": e.meta["image"]} for e in entries]
  with open(os.path.join(base, "metadata", f"{split}.json"), "w") as f:
    json.dump({"image_base_path": "/data/sls/placesaudio/images/",
               "audio_base_path": "/data/sls/placesaudio/distro/", "data": data}, f)
  records = [{"id": e.id, "word": e.meta["words"], "start": e.meta["starts"],
              "end": e.meta["ends"]} for e in entries if e.meta["words"]]
  records = [records[i] for i in rng.permutation(len(records))]  # alignment order != metadata
  records.insert(int(rng.integers(len(records) + 1)),
                 {"id": orphan_id, "word": ["orphan", "record"], "start": [0.2, 0.6],
                  "end": [0.5, 0.9]})
  if split == "train":
    with open(os.path.join(base, "metadata", "word-alignment-train.json"), "w") as f:
      json.dump(records, f)
    return
  lines, row = [",id,word,start,end"], 0  # pandas to_csv: unnamed index column, one row per word
  for r in records:
    for w, s, e in zip(r["word"], r["start"], r["end"]):
      lines.append(f"{row},{r['id']},{w},{float(s)},{float(e)}")
      row += 1
  with open(os.path.join(base, "metadata", f"word-alignment-{split}.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def places_audio(root, *, num_train=10, num_val=5, seed=0, faults=True, seconds=(1.0, 12.0),
                 image_sizes=None) -> Fixture:
  """Writes PlacesAudio_400k_distro/ and places_subset/ under root.  image_sizes: optional
  (width, height) list cycled over the OK entries (default mostly 256x256, some 320x240 and
  200x300).  OK entry 1 of each split is long (max(seconds[1], 10.8) s), OK entry 2 has no
  word alignment, OK entry 3 has a grayscale JPEG; each alignment file also holds a record for
  an id that is not in the metadata."""
  root = media.abs(root)
  base, images = os.path.join(root, "PlacesAudio_400k_distro"), os.path.join(root, "places_subset")
  kinds = media.fault_plan(faults, PLACES_FAULTS, PLACES_FAULTS)
  media.prepare(base)
  media.prepare(images)
  os.makedirs(os.path.join(base, "metadata"))
  layouts = {s: media.layout(media.rng(seed, "places", s, "layout"), n, kinds)
             for s, n in (("train", num_train), ("val", num_val))}
  total = sum(len(v) for v in layouts.values())
  utts = iter(media.rng(seed, "places", "ids").choice(1_000_000, size=total, replace=False).tolist())
  entries = {}
  for si, (split, layout) in enumerate(layouts.items()):
    es, ok_i, n_bad_image = [], 0, 0
    for i, status in enumerate(layout):
      rng = media.rng(seed, "places", split, i)
      v = ok_i if status == "ok" else -1
      es.append(_places_entry(rng, base, images, split, status, v, next(utts), seconds,
                              image_sizes, n_bad_image + si))
      ok_i += status == "ok"
      n_bad_image += status == "bad_image"
    _write_places_metadata(base, split, es, media.rng(seed, "places", split, "align"),
                           f"{7 + si}/utterance_{1_000_000 + si}")
    entries[split] = es
  return Fixture(root=root, entries=entries)


# ----------------------------------------------------------------------------- AudioSet

_YT = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_REAL_CLASSES = (("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"),
                 ("/m/02zsn", "Female speech, woman speaking"),
                 ("/m/0ytgt", "Child speech, kid speaking"), ("/m/01h8n0", "Conversation"),
                 ("/m/02qldy", "Narration, monologue"), ("/m/0261r1", "Babbling"),
                 ("/m/0brhx", "Speech synthesizer"), ("/m/07p6fty", "Shout"),
                 ("/m/07q4ntr", "Bellow"))
_NOUNS = ("Engine", "Bird", "Dog", "Water", "Music", "Drum", "Guitar", "Wind", "Rain", "Bell",
          "Door", "Vehicle", "Insect", "Siren", "Crowd", "Tools", "Glass", "Fire", "Clock", "Horn")
_ADJS = ("idling", "chirping", "barking", "dripping", "loud", "distant", "electric", "knocking",
         "rustling", "ringing", "squeaking", "humming", "tweeting", "roaring")
UNKNOWN_MID = "/m/0zzzz9q"


def audioset_classes() -> list[tuple[str, str]]:
  """The 527 (mid, display_name) rows of the fixture's class_labels_indices.csv (seed-free)."""
  rng = np.random.default_rng(527)
  out, seen = list(_REAL_CLASSES), {m for m, _ in _REAL_CLASSES}
  chars = np.array(list("0123456789bcdfghjklmnpqrstvwxyz_"))
  while len(out) < 527:
    i = len(out)
    mid = (f"/t/dd00{i:03d}" if i % 25 == 0 else
           "/m/0" + "".join(rng.choice(chars, rng.integers(4, 7))))
    if mid in seen:
      continue
    noun, adj = _NOUNS[int(rng.integers(len(_NOUNS)))], _ADJS[int(rng.integers(len(_ADJS)))]
    out.append((mid, f"{noun}, {adj} {i}" if i % 3 == 0 else f"{noun} {adj} {i}"))
    seen.add(mid)
  return out


def _audioset_frames(rng, w, h) -> list[Image.Image]:
  """Ten frames of one scene: frame k is brighter than frame k-1 and its square is further right."""
  base = np.asarray(media.natural_image(rng, w, h), np.float32)
  bw, bh = w // 6, h // 6
  y0, col = int(rng.integers(0, h - bh)), rng.integers(0, 256, 3)
  frames = []
  for k in range(10):
    f = base.copy()
    x0 = (w - bw) * k // 9
    f[y0:y0 + bh, x0:x0 + bw] = col
    frames.append(Image.fromarray(np.clip(f * (0.5 + 0.055 * k) + 6 * k, 0, 255).astype(np.uint8)))
  return frames


def _audioset_entry(rng, folder, split, status, v, ytid, classes, seconds, bad_variant):
  """One AudioSet row; v is the OK index (variants by v % 4 / v % 5) or -1 for faulty ones."""
  v = v if v >= 0 else 6  # faulty rows: 44.1 kHz stereo, 320x240, whole-second bounds
  s = 0.0 if v == 0 else 10.0 * int(rng.integers(1, 60)) + (2.5 if v % 4 == 1 else 0.0)
  e = s + (round(float(rng.uniform(3.0, 9.9)), 3) if v % 5 == 2 else 10.0)
  s_str, e_str = f"{s:.3f}", f"{e:.3f}"
  eid = f"{ytid}_{float(s_str)}_{float(e_str)}"
  tags = sorted(rng.choice(len(classes), int(rng.integers(1, 4)), replace=False).tolist())
  mids = [classes[i][0] for i in rng.permutation(tags)]
  if status == "unknown_label":
    mids.insert(int(rng.integers(len(mids) + 1)), UNKNOWN_MID)
  files = {"audio": os.path.join(folder, "audio", f"{eid}.mp3")}
  for k in range(10):
    files[f"frame_{k}"] = os.path.join(folder, "frames", f"frame_{k}", f"{eid}.jpg") \
        if split == "train" else os.path.join(folder, "frames", f"{eid}_{k}.jpg")
  sr, channels = (48000, 1) if v % 4 == 3 else (44100, 2)
  dur = SHORT_SECONDS if status == "short_audio" else float(rng.uniform(*seconds))
  x = media.sound(rng, sr, dur, channels)
  audio, rate, adetail = media.emit_audio(files["audio"], x, sr, "mp3", status, rng)
  w, h = (426, 240) if v % 5 == 4 else (320, 240)
  bad_k = int(rng.integers(10))
  frames, fdetail = [], ""
  for k, img in enumerate(_audioset_frames(rng, w, h)):
    fs = status if (status == "missing_image" or k == bad_k) else "ok"
    frame, idetail = media.emit_image(files[f"frame_{k}"], img, fs, rng, bad_variant)
    frames.append(frame)
    fdetail = fdetail or (f"frame {k}: {idetail}" if idetail else "")
  meta = {"ytid": ytid, "start_seconds": float(s_str), "end_seconds": float(e_str), "tags": tags,
          "start_str": s_str, "end_str": e_str, "positive_labels": ",".join(mids),
          "unknown_mids": [UNKNOWN_MID] if status == "unknown_label" else [],
          "audio_frames": x.shape[0],
          "bad_frame": bad_k if status in ("missing_frame", "bad_image") else None,
          "fault": adetail or fdetail}
  return Entry(id=eid, split=split, status=status, files=files, sample_rate=rate, audio=audio,
               frames=frames, meta=meta)


def _write_audioset_csvs(folder, split, entries, classes):
  with open(os.path.join(folder, "metadata", "class_labels_indices.csv"), "w") as f:
    f.write("index,mid,display_name\n")
    f.writelines(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(classes))
  rows = [(e.meta["ytid"], e.meta["start_str"], e.meta["end_str"], e.meta["positive_labels"])
          for e in entries]
  if split == "train":  # AudioSet's distributed format
    n_pos = sum(len(r[3].split(",")) for r in rows)
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(classes)}, "
             f"num_positive_labels={n_pos}", "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{y}, {s}, {e}, "{l}"' for y, s, e, l in rows]
    name = "unbalanced_train_segments.csv"
  else:
    lines = ["YTID,start_seconds,end_seconds,positive_labels"]
    lines += [f'{y},{s},{e},"{l}"' for y, s, e, l in rows]
    name = "eval_segments_subset.csv"
  with open(os.path.join(folder, "metadata", name), "w") as f:
    f.write("\n".join(lines) + "\n")


def audioset(root, *, num_train=10, num_val=5, seed=0, faults=True, eval_faults=False,
             seconds=(2.0, 4.0)) -> Fixture:
  """Writes audioset-raw/ (split 'train') and audioset-eval/ (split 'val') under root.  The eval
  copy gets only the non-file faults of `faults` (unknown_label) unless eval_faults is True (then
  the same kinds as train) or a kind list/dict of its own.  'missing_image' (all ten frames
  absent) may be asked for explicitly."""
  root = media.abs(root)
  allowed = AUDIOSET_FAULTS + ("missing_image",)
  train_kinds = media.fault_plan(faults, AUDIOSET_FAULTS, allowed)
  if eval_faults is True:
    eval_kinds = list(train_kinds)
  elif eval_faults:
    eval_kinds = media.fault_plan(eval_faults, AUDIOSET_FAULTS, allowed)
  else:
    eval_kinds = [k for k in train_kinds if k == "unknown_label"]
  classes = audioset_classes()
  id_rng = media.rng(seed, "audioset", "ytids")
  entries, used = {}, set()
  for si, (split, name, n, kinds) in enumerate((("train", "audioset-raw", num_train, train_kinds),
                                                ("val", "audioset-eval", num_val, eval_kinds))):
    folder = os.path.join(root, name)
    media.prepare(folder)
    os.makedirs(os.path.join(folder, "metadata"))
    es, ok_i, n_bad = [], 0, 0
    for i, status in enumerate(media.layout(media.rng(seed, "audioset", split, "layout"), n, kinds)):
      while True:
        ytid = "".join(id_rng.choice(_YT, 11))
        ytid = "-" + ytid[1:] if len(es) % 3 == 0 else ytid
        if ytid not in used:
          used.add(ytid)
          break
      v = ok_i if status == "ok" else -1
      es.append(_audioset_entry(media.rng(seed, "audioset", split, i), folder, split, status, v, ytid,
                                classes, seconds, n_bad + si))
      ok_i += status == "ok"
      n_bad += status == "bad_image"
    _write_audioset_csvs(folder, split, es, classes)
    entries[split] = es
  return Fixture(root=root, entries=entries)


# ----------------------------------------------------------------------------- ADE20K prompted

# (word, ADE class id, ADE name, VGGSound class); ids above 255 too.
ADE_OBJECTS = (("person", 1831, "person, individual, someone, somebody, mortal, soul",
                "people babbling"), ("cat", 396, "cat", "cat meowing"),
               ("dog", 776, "dog, domestic dog, canis familiaris", "dog barking"),
               ("car", 420, "car, auto, automobile, machine, motorcar", "car engine knocking"),
               ("bird", 205, "bird", "bird chirping, tweeting"),
               ("boat", 237, "boat", "motorboat, speedboat acceleration"),
               ("horse", 1210, "horse, equus caballus", "horse clip-clop"),
               ("water", 2977, "water", "stream burbling"), ("clock", 517, "clock", "clock tick"),
               ("bed", 165, "bed", "people snoring"), ("tree", 3233, "tree", "wind noise"),
               ("train", 2851, "train, railroad train", "railroad car, train wagon"))
ADE_BACKGROUNDS = ((2978, "wall"), (976, "floor, flooring"), (2420, "sky"), (447, "ceiling"))


def _ade_scene(rng, w, h):
  """Label map [h, w] (background, an ellipse object left, a box object right, an unlabeled
  strip) and an image whose colours follow the classes."""
  bg = ADE_BACKGROUNDS[int(rng.integers(len(ADE_BACKGROUNDS)))]
  objs = [ADE_OBJECTS[i] for i in rng.choice(len(ADE_OBJECTS), 2, replace=False)]
  label = np.full((h, w), bg[0], np.int32)
  yy, xx = np.mgrid[0:h, 0:w]
  cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.22, 0.3) * w
  ry, rx = rng.uniform(0.15, 0.28) * h, rng.uniform(0.1, 0.18) * w
  label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = objs[0][1]
  y0, x0 = int(rng.uniform(0.1, 0.4) * h), int(rng.uniform(0.55, 0.65) * w)
  label[y0:y0 + int(rng.uniform(0.3, 0.5) * h), x0:x0 + int(rng.uniform(0.2, 0.3) * w)] = objs[1][1]
  label[:, :3] = 0
  ids = np.unique(label)
  colours = rng.integers(0, 256, (len(ids), 3))
  field = np.asarray(media.natural_image(rng, w, h), np.float32)
  img = 0.45 * field + 0.55 * colours[np.searchsorted(ids, label)]
  return label, Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), objs, bg


def _write_label(path, label, rng) -> np.ndarray:
  """RGB PNG with R = (id // 256) * 10 + r, G = id % 256 (r in 0..9, 7 on the objects), B noise."""
  ids = np.unique(label)
  roff = rng.integers(0, 10, len(ids))
  roff[ids > 255] = 7
  r = (label // 256) * 10 + roff[np.searchsorted(ids, label)]
  rgb = np.stack([r, label % 256, rng.integers(0, 256, label.shape)], -1).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rgb, "RGB").save(path, compress_level=1)
  return (rgb[..., 0].astype(np.int32) // 10) * 256 + rgb[..., 1]


_SOUND_FAULT_FMT = {"truncated_audio": ("flac", 44100), "bad_audio": ("ogg", 22050),
                    "empty_audio": ("wav", 16000), "short_audio": ("wav", 22050),
                    "missing_audio": ("flac", 16000)}


def _ade_prompt(r, folder, speech, word, status, v, row) -> dict:
  """Writes one prompt clip; returns its csv cell, timing, sample rate, truth and fault detail."""
  short = status == "short_audio"
  timing = None
  if speech:
    cell = f"prompts/{word}/{word}_{row:03d}.wav"
    dur = SHORT_SECONDS if short else float(r.uniform(1.8, 2.4))
    say = [word] if short or r.random() < 0.5 else ["the", word]
    x, _, st, en = media.speech(r, 16000, dur, say, fixed=True)
    x, sr, fmt, timing = x[:, None], 16000, "wav", [round(st[-1], 2), round(en[-1], 2)]
  else:
    fmt, sr = ("wav", "flac", "ogg")[v % 3], (16000, 22050, 44100)[(v + v // 3) % 3]
    fmt, sr = _SOUND_FAULT_FMT.get(status, (fmt, sr))
    dur = SHORT_SECONDS if short else float(r.uniform(2.0, 4.0))
    x = media.sound(r, sr, dur, 2 if v % 4 in (1, 2) else 1)
    cell = f"vggsound/{''.join(r.choice(_YT[:62], 11))}_{int(r.integers(0, 300000)):06d}.{fmt}"
  audio, rate, detail = media.emit_audio(os.path.join(folder, "audio", os.path.basename(cell)), x, sr,
                                    fmt, status, r)
  return {"cell": cell, "timing": timing, "rate": rate, "audio": audio, "fault": detail,
          "audio_frames": x.shape[0], "word": word}


NO_PROMPT = {"cell": "", "timing": None, "rate": 0, "audio": None, "fault": "",
             "audio_frames": 0, "word": ""}


def ade20k_prompted(root, kind, *, num=8, seed=0, faults=True, missing=False) -> Fixture:
  """Writes ADE20KSpeechPrompted/ (kind 'speech') or ADE20KSoundPrompted/ (kind 'sound') under
  root: `num` OK rows (mostly two per image) plus fault rows.  no_prompt / class_zero rows share
  an image with OK rows; every other fault row has an image of its own.  A speech class seen
  again reuses its prompt file.  missing=True adds missing_audio and missing_image rows."""
  if kind not in ("speech", "sound"):
    raise ValueError(kind)
  speech = kind == "speech"
  root = media.abs(root)
  folder = os.path.join(root, "ADE20KSpeechPrompted" if speech else "ADE20KSoundPrompted")
  kinds = media.fault_plan(faults, ADE_FAULTS, ADE_FAULTS + ADE_MISSING)
  kinds += list(ADE_MISSING) if missing else []
  media.prepare(folder)
  rng = media.rng(seed, "ade", kind)
  groups, left = [], num  # per image: the statuses of its rows
  while left > 0:
    k = min(left, 2 if not groups or rng.random() < 0.7 else 1)
    groups.append(["ok"] * k)
    left -= k
  for status in kinds:
    if status in ("no_prompt", "class_zero") and groups:
      g = groups[int(rng.integers(len(groups)))]
      g.insert(int(rng.integers(len(g) + 1)), status)
    else:
      groups.append([status])
  groups = [groups[i] for i in rng.permutation(len(groups))]
  entries, rows, prompts, ok_i, n_bad, img_no = [], [], {}, 0, 0, 0
  for gi, group in enumerate(groups):
    img_no += int(rng.integers(1, 6))
    loc = f"validation/ADE_val_{img_no:08d}.jpg"
    w, h = ((384, 256), (256, 256), (300, 400))[gi % 3]
    label, img, objs, bg = _ade_scene(rng, w, h)
    gstat = next((s for s in group if s in ("bad_image", "missing_image", "label_size")), "ok")
    files = {"image": os.path.join(folder, "frames", loc),
             "label": os.path.join(folder, "annotations", loc[:-4] + "_seg.png")}
    image, idetail = media.emit_image(files["image"], img, gstat, rng, n_bad)
    n_bad += gstat == "bad_image"
    truth = _write_label(files["label"], label[::2, ::2] if gstat == "label_size" else label, rng)
    obj_iter = iter(objs)
    for status in group:
      v = ok_i if status == "ok" else -1
      if status == "no_prompt":  # a class of the image, but an empty prompt cell
        (cid, name), snd, prompt = bg, "", NO_PROMPT
      elif status == "class_zero" and prompts:  # class 0, pointing at an existing prompt
        cid, name, snd, prompt = 0, "-", objs[0][3], next(iter(prompts.values()))
      else:
        word, cid, name, snd = next(obj_iter) if status != "class_zero" else (
            objs[0][0], 0, "-", objs[0][3])
        if speech and status == "ok" and word in prompts:  # same class again: same prompt file
          prompt = prompts[word]
        else:
          prompt = _ade_prompt(media.rng(seed, "ade", kind, "prompt", len(rows)), folder, speech, word,
                               status, v, len(rows))
          if status == "ok":
            prompts.setdefault(word, prompt)
      cell, timing = prompt["cell"], prompt["timing"]
      efiles = dict(files)
      if cell:
        efiles["audio"] = os.path.join(folder, "audio", os.path.basename(cell))
      entries.append(Entry(
          id=f"{os.path.basename(loc)[:-4]}_{cid}", split="val", status=status, files=efiles,
          sample_rate=prompt["rate"], audio=prompt["audio"], image=image, label=truth,
          meta={"class_id": cid, "prompt_file": cell, "timing": timing, "image_location": loc,
                "row": len(rows), "name": name, "word": prompt["word"],
                "audio_frames": prompt["audio_frames"], "fault": prompt["fault"] or idetail}))
      rows.append([loc, cid, name, cell, json.dumps(timing) if timing else "", prompt["word"]]
                  if speech else [loc, cid, name, cell, snd])
      ok_i += status == "ok"
  header = (["image_location", "ade_class_id", "ade_name", "speech_prompt_file", "timing", "word"]
            if speech else ["image_location", "ade_class_id", "ade_name", "vggsound_file",
                            "vggsound_class"])
  with open(os.path.join(folder, "prompted_segmentation.csv"), "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
  return Fixture(root=root, entries={"val": entries})
