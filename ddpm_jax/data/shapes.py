"""The built-in `shapes` dataset: one coloured shape on a plain or graded background.

Images are drawn on the fly from (seed, split, index) at any resolution, with
no files and no TensorFlow, so tests and smoke runs need nothing on disk. The
data are deliberately easy (3 shapes, 6 colours, 4 backgrounds) so that a tiny
U-Net learns them in a few hundred CPU steps. Each image's class is its
shape's kind (`SHAPE_KINDS`: 'circle', 'square', 'triangle').
"""
import dataclasses
import functools
import operator
from typing import ClassVar

import numpy as np

SPLIT_SIZES = {'train': 50_000, 'test': 5_000}  # nominal lengths; any index renders
SHAPE_KINDS = ('circle', 'square', 'triangle')
FOREGROUND_COLOURS = np.array([
    [230, 40, 40],  # red
    [250, 140, 20],  # orange
    [245, 215, 30],  # yellow
    [40, 175, 60],  # green
    [40, 90, 230],  # blue
    [200, 40, 200],  # magenta
], np.float32)
# Two dark and two light: every foreground colour stands out on each of them.
# A gradient only blends colours of the same tone, so the contrast holds.
BACKGROUND_COLOURS = np.array([
    [20, 22, 35],  # near-black
    [65, 65, 75],  # charcoal
    [240, 238, 228],  # off-white
    [185, 198, 212],  # pale blue-grey
], np.float32)

_MIN_EXTENT, _MAX_EXTENT = 0.3, 0.6  # shape size as a fraction of the side
_MARGIN = 0.08  # gap between the shape and the border, as a fraction of the side
_NUM_FIELDS = 7  # uniform numbers drawn per image (see `_image_params`)
_SQRT3_2 = np.float32(np.sqrt(3) / 2)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """Returns the splitmix64 hash of each uint64 in `x` (wrapping arithmetic)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def _stream_key(seed: int, split: str) -> np.ndarray:
  """Returns uint64 [1]: the hash key of the (seed, split) index stream."""
  # Arrays, not numpy scalars: only array arithmetic wraps without warnings.
  key = _splitmix64(np.array([seed % 2**64], np.uint64))
  return _splitmix64(key ^ np.uint64(list(SPLIT_SIZES).index(split)))


def uniforms(seed: int, split: str, indices, num: int) -> np.ndarray:
  """Returns float64 [len(indices), num] uniforms in [0, 1) keyed by (seed, split, index).

  A counter-based hash rather than np.random.Generator: any index costs the
  same, a whole batch is one vectorised call, and there is no state to carry.
  """
  per_index = _splitmix64(_stream_key(seed, split) ^ np.asarray(indices, np.uint64))
  fields = np.arange(num, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
  bits = _splitmix64(per_index[:, None] ^ fields[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) / 2.0**53


def shape_kinds(seed: int, split: str, indices) -> np.ndarray:
  """Returns int32 [len(indices)]: each image's shape kind, an index into SHAPE_KINDS (its class label)."""
  indices = np.asarray(indices, np.int64).reshape(-1)
  # Field 0 of the image's uniforms, as `_image_params` reads it (field k does not depend on how many are drawn).
  return (uniforms(seed, split, indices, 1)[:, 0] * len(SHAPE_KINDS)).astype(np.int32)


def _image_params(u: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
  """Returns the per-image shape, colours, extent and centre drawn from uniforms `u`."""
  extent = (_MIN_EXTENT + (_MAX_EXTENT - _MIN_EXTENT) * u[:, 2]) * image_size
  room = image_size * (1 - 2 * _MARGIN) - extent  # where the centre may move
  low = image_size * _MARGIN + extent / 2
  top = (u[:, 5] * len(BACKGROUND_COLOURS)).astype(int)
  # Bottom colour: the same (plain) or the other colour of the same tone.
  bottom = np.where(u[:, 6] < 0.5, top, top ^ 1)
  return {
      'kind': (u[:, 0] * len(SHAPE_KINDS)).astype(int),
      'colour': FOREGROUND_COLOURS[(u[:, 1] * len(FOREGROUND_COLOURS)).astype(int)],
      'half': (extent / 2).astype(np.float32),
      'cx': (low + room * u[:, 3]).astype(np.float32),
      'cy': (low + room * u[:, 4]).astype(np.float32),
      'top': BACKGROUND_COLOURS[top],
      'bottom': BACKGROUND_COLOURS[bottom],
  }


def _circle_distance(dx, dy, half):
  """Returns the signed distance in pixels to a circle's edge (< 0 inside)."""
  return np.sqrt(dx * dx + dy * dy) - half


def _square_distance(dx, dy, half):
  """Returns the signed distance in pixels to an axis-aligned square's edge (< 0 inside)."""
  # A little smaller than the circle so that it looks as big.
  return np.maximum(np.abs(dx), np.abs(dy)) - half * np.float32(0.9)


def _triangle_distance(dx, dy, half):
  """Returns the signed distance in pixels to an upright equilateral triangle's edge (< 0 inside)."""
  # A little wider than the circle so that it looks as big, centred on its
  # bounding box. The max over the three edges' half-planes is exact inside
  # and close enough outside for anti-aliasing.
  height = np.float32(2.2) * half * _SQRT3_2
  slanted = _SQRT3_2 * np.abs(dx) - 0.5 * (dy + height / 2)
  return np.maximum(slanted, dy - height / 2)


_DISTANCES = (_circle_distance, _square_distance, _triangle_distance)  # by SHAPE_KINDS


def _signed_distance(kind, dx, dy, half):
  """Returns float32 [N, H, W] signed distance in pixels to each image's shape (< 0 inside)."""
  distance = np.empty((len(kind), dy.shape[1], dx.shape[2]), np.float32)
  for k, shape_distance in enumerate(_DISTANCES):
    chosen = kind == k
    if chosen.any():  # each image pays for its own shape only
      distance[chosen] = shape_distance(dx[chosen], dy[chosen], half[chosen])
  return distance


def render_shapes(seed: int, split: str, indices, image_size: int) -> np.ndarray:
  """Returns uint8 [len(indices), image_size, image_size, 3] images of one shape each.

  Edges are anti-aliased by analytic coverage (half a pixel either side of the
  boundary), so 8 px images are as clean as 64 px ones.
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  p = _image_params(uniforms(seed, split, indices, _NUM_FIELDS), image_size)
  centres = np.arange(image_size, dtype=np.float32) + 0.5
  dx = centres[None, None, :] - p['cx'][:, None, None]
  dy = centres[None, :, None] - p['cy'][:, None, None]
  half = p['half'][:, None, None]
  distance = _signed_distance(p['kind'], dx, dy, half)
  coverage = np.clip(0.5 - distance, 0, 1)[..., None]
  t = (centres / image_size)[None, :, None, None]  # vertical gradient position
  background = p['top'][:, None, None] * (1 - t) + p['bottom'][:, None, None] * t
  image = background + coverage * (p['colour'][:, None, None] - background)
  return (image + 0.5).astype(np.uint8)  # rounds: values are in [0, 255]


@dataclasses.dataclass(frozen=True)
class ShapesSource:
  """A grain random-access source of `shapes` images (uint8 [size, size, 3]).

  Frozen and tiny, so it pickles cheaply into grain worker processes. Labels:
  the shape's kind, named by `class_names`.
  """
  class_names: ClassVar[tuple[str, ...]] = SHAPE_KINDS
  image_size: int
  split: str = 'train'
  seed: int = 0

  def __post_init__(self):
    if self.split not in SPLIT_SIZES:
      raise ValueError(
          f'shapes: unknown split {self.split!r}; valid splits: {list(SPLIT_SIZES)}.')

  def __len__(self) -> int:
    return SPLIT_SIZES[self.split]

  def __getitem__(self, index) -> np.ndarray:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f'shapes index {index} out of range [0, {len(self)}).')
    return render_shapes(self.seed, self.split, [index], self.image_size)[0]

  def read_labels(self, indices) -> np.ndarray:
    """Returns int32 [len(indices)]: the class (shape kind) of each image at `indices`."""
    return shape_kinds(self.seed, self.split, indices)
