"""Sample grids and image files. The quantisation is eval_bridge's, so PNGs and metrics agree bit for bit."""
import math
import os

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from eval_bridge.convert import to_uint8

# 16-px samples tile to a 146-px grid, where nothing can be seen at 100% zoom; grids are enlarged to at
# least this width, by a whole factor so that each sample pixel stays a sharp square.
GRID_MIN_WIDTH = 512


def upscale_factor(width: int, min_width: int) -> int:
  """Returns the smallest whole factor that makes `width` pixels at least `min_width` wide (at least 1)."""
  return max(1, math.ceil(min_width / max(width, 1)))


def upscale(image_uint8: np.ndarray, factor: int) -> np.ndarray:
  """Returns the (..., H, W, C) images enlarged `factor` times by nearest neighbour: each pixel a factor² square."""
  return np.repeat(np.repeat(image_uint8, factor, axis=-3), factor, axis=-2)


def make_grid(images_uint8: np.ndarray, padding: int = 2, columns: int | None = None,
              min_width: int = GRID_MIN_WIDTH) -> np.ndarray:
  """Returns one uint8 HWC image tiling the NHWC batch in a near-square grid with white padding.

  Each image is enlarged by the smallest whole factor (nearest neighbour) that makes the grid at least
  `min_width` pixels wide (0 = never); the padding stays `padding` pixels, so the images stay apart.
  """
  n, h, w, c = images_uint8.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  factor = upscale_factor(w, math.ceil(((min_width - padding) / columns - padding))) if min_width else 1
  images_uint8, h, w = upscale(images_uint8, factor), h * factor, w * factor
  grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
  for index, image in enumerate(images_uint8):
    top, left = padding + (index // columns) * (h + padding), padding + (index % columns) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def make_class_grid(images_uint8: np.ndarray, row_names: Sequence[str], padding: int = 2,
                    min_width: int = GRID_MIN_WIDTH) -> np.ndarray:
  """Returns a grid with one row per name (the batch in row order, as many columns as fit) and the names at the left.

  The samples' part is make_grid's, at least `min_width` pixels wide; the legend is a white strip before it.
  """
  rows = len(row_names)
  columns = len(images_uint8) // rows
  if not rows or columns * rows != len(images_uint8):
    raise ValueError(f'a class grid of {len(row_names)} rows cannot hold {len(images_uint8)} images')
  grid = make_grid(images_uint8, padding, columns=columns, min_width=min_width)
  return with_legend(grid, row_names, padding)


def with_legend(grid: np.ndarray, row_names: Sequence[str], padding: int) -> np.ndarray:
  """Returns the grid of len(row_names) rows with a white strip at its left naming each row, centred on it."""
  row_height = (grid.shape[0] - padding) // len(row_names) - padding
  font = ImageFont.load_default(size=max(10, min(24, row_height // 3)))
  margin = font.size // 2
  width = math.ceil(max(font.getlength(name) for name in row_names)) + 2 * margin
  canvas = Image.new('RGB', (width + grid.shape[1], grid.shape[0]), (255, 255, 255))
  canvas.paste(Image.fromarray(grid), (width, 0))
  draw = ImageDraw.Draw(canvas)
  for row, name in enumerate(row_names):
    middle = padding + row * (row_height + padding) + row_height / 2
    draw.text((margin, middle), name, fill=(0, 0, 0), font=font, anchor='lm')
  return np.asarray(canvas)


def save_png(path: str, image_uint8: np.ndarray) -> None:
  """Writes an HWC uint8 image as a PNG, atomically (a temp file renamed into place)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  Image.fromarray(image_uint8).save(tmp, format='PNG')
  os.replace(tmp, path)


def save_samples(directory: str, name: str, images,
                 row_names: Sequence[str] = ()) -> tuple[str, np.ndarray, np.ndarray]:
  """Writes images in [-1, 1] as directory/name.png; returns the path, the raw uint8 batch and the PNG's image.

  The PNG is an enlarged grid: near-square, or with `row_names` one row per name, named in a legend.
  """
  images_uint8 = to_uint8(images)
  path = os.path.join(directory, f'{name}.png')
  grid = make_class_grid(images_uint8, row_names) if row_names else make_grid(images_uint8)
  save_png(path, grid)
  return path, images_uint8, grid
