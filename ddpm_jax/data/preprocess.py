"""Image decoding and the one-time preprocessing: any PIL mode → RGB, centre crop, resize.

Both the TFDS and the folder readers decode with PIL through `decode_image`, so
a dataset looks the same whichever way it arrives. The result is what the
cache stores: uint8 [size, size, 3].
"""
import collections
from concurrent import futures
import io
import os
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image
from PIL import ImageOps

# Antialiased: Pillow widens the bicubic kernel by the downscale factor.
RESAMPLE = Image.Resampling.BICUBIC
# JPEGs are decoded at a reduced DCT scale when they are at least this many
# times the target size: much faster, and the final bicubic pass still has
# 2x the pixels it needs, so quality is unchanged.
_DRAFT_FACTOR = 2
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La')
_WHITE = (255, 255, 255)

In = TypeVar('In')
Out = TypeVar('Out')


def to_rgb(image: Image.Image) -> Image.Image:
  """Returns `image` as 8-bit RGB; transparency is composited on white.

  Handles 1, L, P (with or without transparency), LA, RGBA, CMYK, YCbCr and
  16/32-bit grayscale (I;16*, I), which PIL's own convert('RGB') would clip.
  """
  if image.mode == 'RGB':
    return image
  if image.mode.startswith('I'):
    return _high_bit_depth_to_rgb(image)
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in _ALPHA_MODES:
    rgba = image.convert('RGBA')
    background = Image.new('RGBA', rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert('RGB')
  return image.convert('RGB')


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
  """Returns a 16-bit (or 32-bit int holding 16-bit) grayscale image as 8-bit RGB, full range kept."""
  values = np.asarray(image).astype(np.float64)
  gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)  # 65535 → 255
  return Image.fromarray(gray, mode='L').convert('RGB')


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
  """Returns the (left, top, right, bottom) box of the largest centred square."""
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


def resize_square(image: Image.Image, image_size: int) -> np.ndarray:
  """Returns the centre square of an RGB `image`, resized (antialiased) to uint8 [size, size, 3]."""
  if image.size[0] != image.size[1]:
    # Crop first: resize(box=...) would let the kernel read pixels outside the box.
    image = image.crop(centre_square(*image.size))
  if image.size[0] != image_size:
    image = image.resize((image_size, image_size), RESAMPLE)
  return np.asarray(image, dtype=np.uint8)


def decode_image(data: bytes | str, image_size: int, *, apply_exif_orientation: bool = False
                 ) -> np.ndarray:
  """Returns uint8 [image_size, image_size, 3] from an encoded image (bytes or a path).

  `apply_exif_orientation` turns a photo the way its EXIF tag says (as image
  viewers do), before cropping. Raises whatever PIL raises for a corrupt or
  truncated file (OSError, SyntaxError, ValueError, ...); callers decide
  whether to skip it.
  """
  source = io.BytesIO(data) if isinstance(data, bytes) else data
  with Image.open(source) as image:
    if image.format == 'JPEG':
      draft_size = _DRAFT_FACTOR * image_size
      image.draft('RGB', (draft_size, draft_size))
    image.load()
    if apply_exif_orientation:
      image = ImageOps.exif_transpose(image)
    return resize_square(to_rgb(image), image_size)


def default_num_threads() -> int:
  """Returns the number of decode threads: one per CPU this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def map_ordered(fn: Callable[[In], Out], items: Iterable[In], num_threads: int) -> Iterator[Out]:
  """Yields fn(item) for each item, in order, computed by a pool of threads.

  Threads, not processes: PIL releases the GIL while it decodes and resizes,
  and forking a process that already runs TensorFlow or JAX threads can
  deadlock. At most a few items per thread are in flight, so a stream of
  encoded images (TFDS) is never read into memory whole.
  """
  max_in_flight = 4 * num_threads
  with futures.ThreadPoolExecutor(num_threads) as pool:
    pending = collections.deque()
    try:
      for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= max_in_flight:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()
