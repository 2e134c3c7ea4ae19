"""Developer tools: building the synthetic world's speech clips (make_speech_clips.py) and
a demo video for `predict --video` (demo_video.py)."""
