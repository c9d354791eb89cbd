"""Reference-split Inception features and image statistics, computed once and cached on disk as .npz files.

The cache key (dataset, split, image size, count, extractor) is the file name, so
a different resolution or count never reuses stale features. Features are stored
as float32, which is lossless: the extractor outputs float32. The image statistics
(`eval_bridge.artefacts.per_image`, a few floats per image) sit beside them in a
file of their own, keyed without the extractor, which they don't depend on.
"""
import dataclasses
import os
import re
from typing import Callable, Iterable

import numpy as np
import torch

from eval_bridge import artefacts
from eval_bridge import fidelity

Batches = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]


def cache_path(cache_dir: str, dataset: str, split: str, image_size: int, count: int) -> str:
  """Returns the .npz path of one reference set's features; the key is the file name."""
  key = f'{dataset}-{split}-{image_size}px-{count}-{fidelity.EXTRACTOR_NAME}-{fidelity.FEATURE_LAYER}'
  return os.path.join(cache_dir, re.sub(r'[^A-Za-z0-9_.-]+', '_', key) + '.npz')


def image_statistics_path(cache_dir: str, dataset: str, split: str, image_size: int, count: int) -> str:
  """Returns the .npz path of one reference set's per-image statistics; the key is the file name."""
  key = f'{dataset}-{split}-{image_size}px-{count}-image-statistics'
  return os.path.join(cache_dir, re.sub(r'[^A-Za-z0-9_.-]+', '_', key) + '.npz')


def _nhwc_to_nchw(batch: np.ndarray) -> torch.Tensor:
  batch = np.asarray(batch)
  if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3):
    raise ValueError(f'reference batches must be uint8 N×H×W×C with C in (1, 3), got '
                     f'{batch.dtype} {batch.shape}')
  return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def extract_features(batches: Iterable[np.ndarray], count: int, extractor, *,
                     batch_size: int = 64, progress: bool = True) -> np.ndarray:
  """Returns the float64 features of the first `count` images of `batches` (uint8 NHWC).

  Stops reading once it has `count` images, so an endless (repeating) iterator works.
  """
  return read_reference(batches, count, extractor, batch_size=batch_size, progress=progress)[0]


def read_reference(batches: Iterable[np.ndarray], count: int, extractor=None, image_statistics: bool = False, *,
                   batch_size: int = 64, progress: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Returns (Inception features or None without an extractor, per-image statistics or None) of `count` images.

  One pass over `batches` (uint8 NHWC) for both; stops once it has `count` images.
  """
  accumulator = None if extractor is None else fidelity.FeatureAccumulator(
      extractor, batch_size=batch_size, total=count, progress=progress, desc='Reference features')
  statistics, seen = [], 0
  for batch in batches:
    images = _nhwc_to_nchw(batch[:count - seen])
    seen += len(images)
    if accumulator is not None:
      accumulator.update(images)
    if image_statistics:
      statistics.append(artefacts.per_image(images.numpy()))
    if seen >= count:
      break
  if seen < count:
    raise ValueError(f'the reference split has {seen} images, fewer than the {count} '
                     'asked for; ask for at most that many reference images')
  return (None if accumulator is None else accumulator.features(),
          np.concatenate(statistics) if image_statistics else None)


@dataclasses.dataclass(frozen=True)
class Reference:
  """What evaluations compare against: features, their Gaussian fit, optional images and image statistics.

  Build it once per run (the fit of 10k features takes seconds) and share it.
  `images` (uint8 NCHW, a few hundred) enables generated-vs-reference MS-SSIM;
  `image_statistics` (`artefacts.per_image` rows) the artefact metrics. A set for
  those alone may lack features (None, and so its `statistics`). A set read from a statistics file
  may hold `statistics` alone (EDM's mu and sigma: FID only); `size` is then the count its file records.
  """
  features: np.ndarray | None
  statistics: dict[str, np.ndarray] | None
  images: torch.Tensor | None = None
  image_statistics: np.ndarray | None = None
  size: int | None = None

  @property
  def count(self) -> int | None:
    """Returns the number of reference images its features (else image statistics, images, size) describe."""
    parts = (self.features, self.image_statistics, self.images)
    return next((len(part) for part in parts if part is not None), self.size)


def make_reference(features: np.ndarray | None, images: torch.Tensor | None = None,
                   image_statistics: np.ndarray | None = None, statistics: dict[str, np.ndarray] | None = None,
                   size: int | None = None) -> Reference:
  """Returns a `Reference` of these features, optional images and image statistics.

  Its FID statistics are `statistics` ({'mu', 'sigma'}, e.g. a file's) if given, else the features' fit.
  """
  if images is not None:
    fidelity.check_uint8_nchw(images)
  if features is None and image_statistics is None and images is None and statistics is None:
    raise ValueError('a reference set needs features, images, image statistics or FID statistics; got none')
  if statistics is None and features is not None:
    statistics = fidelity.fid_statistics(features)
  return Reference(features, statistics, images, image_statistics, size)


def reference_features(batches: Batches, cache_dir: str, *, dataset: str, split: str,
                       image_size: int, count: int, extractor, batch_size: int = 64,
                       progress: bool = True) -> np.ndarray:
  """Returns float64 Inception features [count, 2048] of a reference split, cached on disk.

  Args:
    batches: uint8 NHWC batches of the reference split, or a function returning
      them (called, and the data pipeline built, only on a cache miss).
    cache_dir: where the .npz files live.
    dataset, split, image_size, count: the cache key.
    extractor: `fidelity.load_inception(...)`; unused on a cache hit.
  """
  key = dict(dataset=dataset, split=split, image_size=image_size, count=count)
  return _cached(batches, cache_dir, key, extractor, ('features',), batch_size, progress)['features']


def reference_set(batches: Batches, cache_dir: str, *, dataset: str, split: str, image_size: int, count: int,
                  extractor=None, image_statistics: bool = False, batch_size: int = 64, progress: bool = True,
                  statistics: dict[str, np.ndarray] | None = None) -> Reference:
  """Returns the `Reference` of a split: Inception features given an extractor, per-image statistics if asked.

  Each part is cached on disk (`cache_path`, `image_statistics_path`); one pass over
  `batches` (as in `reference_features`) computes whatever is not cached yet. `statistics`
  ({'mu', 'sigma'}, e.g. an ADM file's) are FID's instead of the features' fit.
  """
  key = dict(dataset=dataset, split=split, image_size=image_size, count=count)
  parts = ('features',) * (extractor is not None) + ('image_statistics',) * image_statistics
  arrays = _cached(batches, cache_dir, key, extractor, parts, batch_size, progress)
  return make_reference(arrays.get('features'), image_statistics=arrays.get('image_statistics'), statistics=statistics,
                        size=count)


def _cached(batches: Batches, cache_dir: str, key: dict, extractor, parts: tuple[str, ...], batch_size: int,
            progress: bool) -> dict[str, np.ndarray]:
  """Returns {part: float64 array} of the parts ('features', 'image_statistics'), read from or written to the cache."""
  paths = {'features': cache_path(cache_dir, **key), 'image_statistics': image_statistics_path(cache_dir, **key)}
  shapes = {'features': (key['count'], fidelity.FEATURE_DIM), 'image_statistics': (key['count'], len(artefacts.FIELDS))}
  arrays = {part: _load(paths[part], part, shapes[part]) for part in parts if os.path.isfile(paths[part])}
  missing = [part for part in parts if part not in arrays]
  if 'features' in missing and extractor is None:
    raise ValueError(f'{paths["features"]} is not cached and no Inception extractor was given to compute it')
  if missing:
    features, statistics = read_reference(
        batches() if callable(batches) else batches, key['count'], extractor if 'features' in missing else None,
        'image_statistics' in missing, batch_size=batch_size, progress=progress)
    computed = {'features': features, 'image_statistics': statistics}
    os.makedirs(cache_dir, exist_ok=True)
    for part in missing:
      arrays[part] = computed[part]
      # Written under a temporary name and renamed, so an interrupted run leaves no half file.
      with open(paths[part] + '.tmp', 'wb') as f:
        np.savez(f, **{part: computed[part].astype(np.float32 if part == 'features' else np.float64)})
      os.replace(paths[part] + '.tmp', paths[part])
  return arrays


def _load(path: str, part: str, shape: tuple[int, int]) -> np.ndarray:
  with np.load(path) as data:
    array = data[part].astype(np.float64)
  if array.shape != shape:
    raise ValueError(f'{path} holds {part} of shape {array.shape}, expected {shape}; delete it to recompute')
  return array
