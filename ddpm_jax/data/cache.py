"""The resize-once cache: preprocessed images in one memory-mapped uint8 .npy.

A dataset is decoded, cropped and resized once, into
`<root>/v<CACHE_VERSION>/...npy` of shape [N, size, size, 3]; every epoch after
that reads rows of the memmap and never decodes an image again. A cache is
written under a temporary name and renamed into place only when complete, so
a killed build leaves no file that could be mistaken for a finished cache.

Where <root> is:
  $DDPM_JAX_CACHE_DIR, if set (it overrides everything);
  else <data.data_dir>/ddpm_jax_cache, if data.data_dir is a local path;
  else a reader-specific default (TFDS: <TFDS data dir>/ddpm_jax_cache;
  folders: ~/.cache/ddpm_jax, or $XDG_CACHE_HOME/ddpm_jax).
The cache must be on a local (or mounted) file system: it is memory-mapped.
"""
import os
import socket
import threading
from typing import Iterable, Sequence

import numpy as np
import tqdm

# Bump when preprocessing changes (filter, crop, colour handling): old caches
# then no longer match and are rebuilt instead of silently reused.
CACHE_VERSION = 1
CACHE_DIR_ENV = 'DDPM_JAX_CACHE_DIR'
_COPY_CHUNK = 4096  # rows per copy when compacting a cache


def cache_root(data_dir: str, default_root: str) -> str:
  """Returns the versioned directory that holds caches (see the module docstring)."""
  local = data_dir and '://' not in data_dir  # gs://... cannot be memory-mapped
  root = os.environ.get(CACHE_DIR_ENV) or (
      os.path.join(data_dir, 'ddpm_jax_cache') if local else default_root)
  return os.path.join(os.path.expanduser(root), f'v{CACHE_VERSION}')


class CachedImages:
  """A grain random-access source of uint8 [size, size, 3] rows of a cache file, and their labels.

  `indices`, if given, selects (and orders) the rows, so several splits can
  share one file. The memmap is opened lazily and dropped when pickled, so a
  source sent to grain worker processes carries a path, not the images.
  `labels_path`, if given, is an int .npy of one class id per file row (-1: none),
  `class_names` the classes' names by id; () when the dataset has no labels.
  """

  def __init__(self, path: str, indices: Sequence[int] | None = None, *,
               labels_path: str | None = None, class_names: Sequence[str] = ()):
    self.path = path
    self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
    self.labels_path = labels_path
    self.class_names = tuple(class_names)
    self._images = None
    self._labels = None
    self._len = len(self.indices) if self.indices is not None else len(self._array())

  def _array(self) -> np.ndarray:
    """Returns the memory-mapped [N, size, size, 3] array, opening it on first use."""
    if self._images is None:
      # A plain ndarray view of the mapping: indexing it skips np.memmap's
      # Python-level __getitem__, a third of the cost of a read.
      self._images = np.asarray(np.load(self.path, mmap_mode='r'))
    return self._images

  def __len__(self) -> int:
    return self._len

  def _row(self, index: int) -> int:
    """Returns the file row of source index `index`."""
    if not -self._len <= index < self._len:
      raise IndexError(f'index {index} out of range for {self._len} images')
    return int(self.indices[index]) if self.indices is not None else index

  def __getitem__(self, index: int) -> np.ndarray:
    # A copy: a writable array that does not pin the file's pages.
    return np.array(self._array()[self._row(index)])

  def _getitems(self, indices: Sequence[int]) -> list[np.ndarray]:
    rows = [self._row(int(i)) for i in indices]
    return list(self._array()[rows])

  def read_labels(self, indices: Sequence[int]) -> np.ndarray:
    """Returns int32 [len(indices)]: the class id of each image at `indices` (-1 where it has none)."""
    if self.labels_path is None:
      raise ValueError(f'{self.path} was cached without labels (by an older version); delete it to rebuild it '
                       'with them.')
    if self._labels is None:
      self._labels = np.load(self.labels_path)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and not (-self._len <= indices.min() and indices.max() < self._len):
      raise IndexError(f'indices out of range for {self._len} images')
    rows = indices if self.indices is None else self.indices[indices]
    return self._labels[rows].astype(np.int32)

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_images': None, '_labels': None}

  def __repr__(self) -> str:
    # Stable across runs: grain checks it when restoring a checkpoint.
    shown = 'all' if self.indices is None else f'{len(self.indices)} selected'
    return f'CachedImages(path={self.path!r}, rows={shown})'


def _partial_name(path: str) -> str:
  """Returns a temporary name for `path` that no other process, here or on another host, uses."""
  return f'{path}.partial-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}'


def write_cache(path: str, images: Iterable[np.ndarray | None], *, max_count: int,
                image_size: int, description: str) -> int:
  """Returns the number of images written to the .npy at `path`, atomically.

  `images` yields at most `max_count` items; None marks a skipped item. If
  any were skipped, the rows written are compacted into a file of the right
  length. Nothing is left at `path` unless the whole cache was written.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = _partial_name(path)
  shape = (max_count, image_size, image_size, 3)
  count = 0
  try:
    out = np.lib.format.open_memmap(partial, mode='w+', dtype=np.uint8, shape=shape)
    with tqdm.tqdm(total=max_count, desc=description, unit='img', smoothing=0.05) as bar:
      for image in images:
        if bar.n == max_count:
          raise ValueError(f'more than the expected {max_count} images for {path}')
        if image is not None:
          out[count] = image
          count += 1
        bar.update()
    out.flush()
    del out
    if count < max_count:
      _compact(partial, count)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return count


def _compact(path: str, count: int) -> None:
  """Rewrites the .npy at `path` to keep only its first `count` rows."""
  source = np.load(path, mmap_mode='r')
  shorter = f'{path}.compact'
  try:
    out = np.lib.format.open_memmap(
        shorter, mode='w+', dtype=source.dtype, shape=(count,) + source.shape[1:])
    for start in range(0, count, _COPY_CHUNK):
      out[start:start + _COPY_CHUNK] = source[start:min(count, start + _COPY_CHUNK)]
    out.flush()
    del out, source
    os.replace(shorter, path)
  finally:
    if os.path.exists(shorter):
      os.remove(shorter)


def save_atomic(path: str, array: np.ndarray) -> None:
  """Returns None; writes a small array to the .npy at `path` via a temporary name."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = _partial_name(path) + '.npy'
  np.save(partial, array)
  os.replace(partial, path)
