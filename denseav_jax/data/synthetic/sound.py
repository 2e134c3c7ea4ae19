"""Sounds of the synthetic world: one procedural, non-speech sound per object class.

Each class has a recognisable sound (a bounce, a buzz, a chirp, a drum roll, ...) whose
pitch and duration vary a little from instance to instance (``SOUND_PITCH_JITTER``,
``SOUND_DURATION_JITTER``); sound captions and sound prompts are made of them.
"""

from __future__ import annotations

import numpy as np

from denseav_jax.data.synthetic import world

# Nominal durations (s); each instance is scaled by U(0.85, 1.15), so 0.35-0.7 s.
SOUND_SECONDS = (0.5, 0.45, 0.42, 0.55, 0.58, 0.5, 0.6, 0.42, 0.5, 0.6)
SOUND_DURATION_JITTER = 0.15
SOUND_PITCH_JITTER = 0.05


def _band_noise(rng, n, sr, lo, hi):
  spec = np.fft.rfft(rng.standard_normal(n))
  f = np.fft.rfftfreq(n, 1 / sr)
  spec[(f < lo) | (f > hi)] = 0
  x = np.fft.irfft(spec, n)
  return x / (np.abs(x).max() + 1e-9)


def _bursts(t, onsets, decay):
  """Sum of decaying envelopes (2 ms attack, no click) starting at `onsets` (seconds)."""
  env = np.zeros_like(t)
  for o in onsets:
    dt = np.maximum(t - o, 0)
    env += np.minimum(dt / 0.002, 1.0) * np.exp(-dt / decay)
  return env


def synth_sound(cid: int, rng: np.random.Generator, sr: int) -> np.ndarray:
  """One instance of class `cid`'s (1-based) sound: float32, peak 0.8."""
  p = 1 + rng.uniform(-SOUND_PITCH_JITTER, SOUND_PITCH_JITTER)
  dur = SOUND_SECONDS[cid - 1] * (1 + rng.uniform(-SOUND_DURATION_JITTER, SOUND_DURATION_JITTER))
  n = int(dur * sr)
  t = np.arange(n) / sr
  tau = 2 * np.pi
  name = world.CLASS_NAMES[cid - 1]
  if name == "ball":        # bouncing: low thumps, accelerating, pitch falling in each bounce
    onsets = dur * np.array([0.0, 0.4, 0.68, 0.87])
    x = _bursts(t, onsets, 0.045) * np.sin(tau * 170 * p * t * (1 - 0.3 * t))
  elif name == "box":       # square-ish buzz
    f = 210 * p
    x = sum(np.sin(tau * k * f * t) / k for k in (1, 3, 5, 7, 9))
  elif name == "tent":      # upward chirp
    f0, f1 = 450 * p, 1500 * p
    x = np.sin(tau * (f0 * t + (f1 - f0) * t * t / (2 * dur)))
  elif name == "star":      # twinkle: high bell partials pulsing at ~14 Hz
    x = (np.sin(tau * 2400 * p * t) + 0.5 * np.sin(tau * 3700 * p * t)) \
        * np.sin(np.pi * 14 * t) ** 4
  elif name == "ring":      # phone-like trill: two tones gated at 25 Hz
    x = (np.sin(tau * 950 * p * t) + 0.7 * np.sin(tau * 1250 * p * t)) \
        * np.clip(3 * np.sin(tau * 25 * t), 0, 1)
  elif name == "cross":     # steady high hiss (3-5 kHz) that swells and fades
    x = _band_noise(rng, n, sr, 3000 * p, min(5000 * p, 0.49 * sr)) \
        * np.sin(np.pi * t / dur) ** 0.5
  elif name == "moon":      # low hoot with 6 Hz vibrato
    f = 300 * p
    x = np.sin(tau * f * t + 0.15 * f / 6 * np.sin(tau * 6 * t)) \
        + 0.3 * np.sin(tau * 2 * f * t)
    x = x * np.sin(np.pi * t / dur)
  elif name == "kite":      # downward chirp with a 2nd harmonic
    f0, f1 = 1700 * p, 500 * p
    ph = tau * (f0 * t + (f1 - f0) * t * t / (2 * dur))
    x = np.sin(ph) + 0.6 * np.sin(2 * ph)
  elif name == "drum":      # regular low drum hits with a noisy attack
    env = _bursts(t, np.arange(0, dur, 1 / 9), 0.035)
    x = env * (np.sin(tau * 75 * p * t) + 0.4 * rng.standard_normal(n) * env)
  elif name == "leaf":      # rustle: low-mid noise band with slow tremolo
    x = _band_noise(rng, n, sr, 300 * p, 1200 * p) \
        * (0.55 + 0.45 * np.sin(tau * 3.5 * t + rng.uniform(0, tau)))
  else:
    raise ValueError(f"no sound for class {cid}")
  fade = int(0.005 * sr)
  ramp = np.linspace(0, 1, fade, endpoint=False)
  x[:fade] *= ramp
  x[n - fade:] *= ramp[::-1]
  return (x * (0.8 / (np.abs(x).max() + 1e-9))).astype(np.float32)

