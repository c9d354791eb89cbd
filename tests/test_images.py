"""Sample grids you can see: enlarged by a whole factor, nearest neighbour, to at least ~512 px; the samples
themselves are kept raw."""
import numpy as np
import pytest
from PIL import Image

from ddpm_jax.run import images


def random_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Returns n random uint8 NHWC images of size x size."""
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def tiles(grid: np.ndarray, n: int, columns: int, side: int, padding: int = 2) -> np.ndarray:
  """Returns the n side x side tiles of a grid, cut where make_grid places them."""
  return np.stack([grid[padding + (i // columns) * (side + padding):][:side,
                        padding + (i % columns) * (side + padding):][:, :side] for i in range(n)])


@pytest.mark.parametrize('n, size, factor', [(64, 16, 4), (4, 8, 32), (64, 32, 2), (64, 64, 1)])
def test_grids_are_enlarged_by_the_smallest_whole_factor_that_reaches_512_px(n, size, factor):
  batch = random_batch(n, size)
  grid = images.make_grid(batch)
  columns = int(np.ceil(np.sqrt(n)))
  assert grid.shape[1] >= images.GRID_MIN_WIDTH
  assert columns * (size * (factor - 1) + 2) + 2 < images.GRID_MIN_WIDTH or factor == 1  # one less is too narrow
  cut = tiles(grid, n, columns, size * factor)
  # Nearest neighbour: every sample pixel is a factor x factor square of exactly its value.
  np.testing.assert_array_equal(cut, np.repeat(np.repeat(batch, factor, axis=1), factor, axis=2))
  assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()  # the white padding stays 2 px


def test_min_width_0_tiles_the_raw_images():
  batch = random_batch(4, 8)
  grid = images.make_grid(batch, min_width=0)
  assert grid.shape == (2 + 2 * 10, 2 + 2 * 10, 3)
  np.testing.assert_array_equal(tiles(grid, 4, 2, 8), batch)


def test_save_samples_writes_the_enlarged_grid_and_returns_the_raw_samples(tmp_path):
  batch = random_batch(9, 16, seed=1)
  path, raw, grid = images.save_samples(str(tmp_path / 'samples'), 'step_3', batch.astype(np.float32) / 127.5 - 1.0)
  np.testing.assert_array_equal(raw, batch)
  with Image.open(path) as png:
    written = np.asarray(png)
  np.testing.assert_array_equal(written, images.make_grid(batch))
  np.testing.assert_array_equal(grid, written)
  assert written.shape[1] >= images.GRID_MIN_WIDTH


def test_a_class_grid_has_one_row_per_class_and_names_each_row_in_a_legend_at_its_left():
  names = ('circle', 'square', 'a_much_longer_class_name')
  batch = random_batch(6, 8, seed=2)  # 2 samples of each class, in row order
  grid = images.make_class_grid(batch, names)
  samples = images.make_grid(batch, columns=2)
  legend_width = grid.shape[1] - samples.shape[1]
  assert samples.shape[1] >= images.GRID_MIN_WIDTH and grid.shape[0] == samples.shape[0] == 2 + 3 * (8 * 32 + 2)
  np.testing.assert_array_equal(grid[:, legend_width:], samples)  # the samples as the near-square grid has them
  legend = grid[:, :legend_width].min(axis=-1)
  inked_rows = [np.flatnonzero((legend[2 + r * 258:2 + r * 258 + 256] < 128).any(axis=1)) for r in range(3)]
  # Each row's name is drawn within its row, around its middle; the longest name sets the legend's width.
  assert all(len(ink) and 40 < ink.min() and ink.max() < 216 for ink in inked_rows), inked_rows
  inked_columns = [np.flatnonzero((legend[2 + r * 258:2 + r * 258 + 256] < 128).any(axis=0)) for r in range(3)]
  assert inked_columns[2].max() > legend_width - 30 and inked_columns[0].max() < legend_width / 2
  with pytest.raises(ValueError, match='a class grid of 3 rows cannot hold 5 images'):
    images.make_class_grid(batch[:5], names)
