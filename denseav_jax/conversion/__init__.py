"""PyTorch weights (DINO, Hugging Face HuBERT, released DenseAV) -> our parameter trees.

One module per source and layer, lowest first:

  torch_io   reading .pth / .pt / .bin / .ckpt / .safetensors files and Hugging Face model
             folders into float32 numpy state dicts (weights_only unless allowed).
  mapping    the shared key bookkeeping (`Reader`) and layout changes (Linear, Conv,
             LayerNorm, peft LoRA), and the error listing unknown / missing / mis-shaped keys.
  dino       a DINO / timm ViT state dict -> models.image.ImageTower params and shape fields.
  hubert     Hugging Face HuBERT keys -> models.audio.AudioTower params and shape fields.
  denseav    a released DenseAV state dict -> the full model's params.
  hparams    a release checkpoint's hyper_parameters and weights -> the run config.
  convert    the driver: one input file or folder -> (params, config).

The command line is `python -m denseav_jax.convert` (docs/convert.md).
"""
