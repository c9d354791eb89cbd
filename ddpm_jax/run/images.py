"""Sample grids and image files. The quantisation is eval_bridge's, so PNGs and metrics agree bit for bit."""
import math
import os

import numpy as np
from PIL import Image

from eval_bridge.convert import to_uint8


def make_grid(images_uint8: np.ndarray, padding: int = 2, columns: int | None = None) -> np.ndarray:
  """Returns one uint8 HWC image tiling the NHWC batch in a near-square grid with white padding."""
  n, h, w, c = images_uint8.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
  for index, image in enumerate(images_uint8):
    top, left = padding + (index // columns) * (h + padding), padding + (index % columns) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(path: str, image_uint8: np.ndarray) -> None:
  """Writes an HWC uint8 image as a PNG, atomically (a temp file renamed into place)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  Image.fromarray(image_uint8).save(tmp, format='PNG')
  os.replace(tmp, path)


def save_samples(directory: str, name: str, images) -> tuple[str, np.ndarray]:
  """Writes images in [-1, 1] as directory/name.png (a grid); returns the path and the uint8 batch."""
  images_uint8 = to_uint8(images)
  path = os.path.join(directory, f'{name}.png')
  save_png(path, make_grid(images_uint8))
  return path, images_uint8
