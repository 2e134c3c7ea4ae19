"""The DenseAV model: the image tower (a DINO ViT, image.py), the audio tower (HuBERT,
audio.py), their shared layers and LoRA, the aligners that map both to the similarity
space, the preprocessing on the devices, and parameter initialisation and shapes."""
