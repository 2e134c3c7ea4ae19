"""Using a trained or converted model: heat maps for an image and a sound (predict.py), and
for every frame of a video (video.py, with PyAV reading and writing in video_io.py)."""
