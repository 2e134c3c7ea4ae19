"""TensorBoard scalars and images (tensorboardX: no TensorFlow needed)."""

import os

import numpy as np


class Writer:
  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._w = SummaryWriter(os.path.join(workdir, 'tb'))

  def scalars(self, step: int, values: dict[str, float]):
    for k, v in values.items():
      self._w.add_scalar(k, float(v), step)
    self._w.flush()

  def image(self, step: int, tag: str, image: np.ndarray):
    """image: [H, W, 3] uint8."""
    self._w.add_image(tag, image, step, dataformats='HWC')
    self._w.flush()

  def close(self):
    self._w.close()


class NullWriter:
  """Stands in on processes other than 0."""

  def scalars(self, step, values):
    pass

  def image(self, step, tag, image):
    pass

  def close(self):
    pass
