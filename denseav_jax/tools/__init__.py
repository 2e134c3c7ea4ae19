"""Developer tools (`python -m denseav_jax.tools.NAME`): building the synthetic world's
speech clips (make_speech_clips.py), a demo video for `predict --video` (demo_video.py) and
a preview grid of the synthetic world (synthetic_preview.py)."""
