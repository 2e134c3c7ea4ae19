"""The built-in synthetic audio-visual world: DenseAV's default, download-free data set.

A scene holds 1-3 coloured, textured shapes ("ball", "box", "tent", ...) on a cluttered
background. Its audio is either a spoken caption naming the objects (espeak-ng words rendered
once into ``denseav_jax/data/assets/speech_clips.npz``) or a caption of each object's
characteristic procedural sound. Because the world knows where every object is and when its
word or sound is heard, it gives exact ground truth for DenseAV's evaluations (speech- and
sound-prompted segmentation, retrieval). Every example is a pure function of
(seed, split, index), computed with numpy on the fly, with the same keys and dtypes whatever
the split (see ``source.SyntheticAVSource``).

Modules, each importing only those listed above it:

  world     class names, filler words, voices, prompt templates, splits; WorldConfig
  speech    the rendered word clips (load_speech_clips) and speed perturbation
  render    each class's shape, colour and texture; render_scene (image + class map)
  sound     each class's procedural sound (synth_sound)
  layout    captions laid out on a fixed-length waveform (lay_out); check_fits
  example   make_example (scene + caption from one seeded generator); describe
  source    SyntheticAVSource (a Grain source by split); SyntheticSource and world_config
            (the source `denseav_jax.data.sources` registers as 'synthetic')
  preview   a PNG grid of examples and the world's speed (the command:
            `python -m denseav_jax.tools.synthetic_preview`)
"""
