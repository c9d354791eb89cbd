"""Reference-split Inception features, computed once and cached on disk as an .npz.

The cache key (dataset, split, image size, count, extractor) is the file name, so
a different resolution or count never reuses stale features. Features are stored
as float32, which is lossless: the extractor outputs float32.
"""
import dataclasses
import os
import re
from typing import Callable, Iterable

import numpy as np
import torch

from eval_bridge import fidelity

Batches = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]


def cache_path(cache_dir: str, dataset: str, split: str, image_size: int, count: int) -> str:
  """Returns the .npz path of one reference set's features; the key is the file name."""
  key = f'{dataset}-{split}-{image_size}px-{count}-{fidelity.EXTRACTOR_NAME}-{fidelity.FEATURE_LAYER}'
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
  accumulator = fidelity.FeatureAccumulator(extractor, batch_size=batch_size, total=count,
                                            progress=progress, desc='Reference features')
  for batch in batches:
    accumulator.update(_nhwc_to_nchw(batch[:count - accumulator.count]))
    if accumulator.count >= count:
      break
  features = accumulator.features()
  if len(features) < count:
    raise ValueError(f'the reference split has {len(features)} images, fewer than the {count} '
                     'asked for; ask for at most that many reference images')
  return features


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
  path = cache_path(cache_dir, dataset, split, image_size, count)
  if os.path.isfile(path):
    return _load(path, count)
  features = extract_features(batches() if callable(batches) else batches, count, extractor,
                              batch_size=batch_size, progress=progress)
  os.makedirs(cache_dir, exist_ok=True)
  # Written under a temporary name and renamed, so an interrupted run leaves no half file.
  with open(path + '.tmp', 'wb') as f:
    np.savez(f, features=features.astype(np.float32))
  os.replace(path + '.tmp', path)
  return features


def _load(path: str, count: int) -> np.ndarray:
  with np.load(path) as data:
    features = data['features'].astype(np.float64)
  if features.shape != (count, fidelity.FEATURE_DIM):
    raise ValueError(f'{path} holds features of shape {features.shape}, expected '
                     f'{(count, fidelity.FEATURE_DIM)}; delete it to recompute')
  return features


@dataclasses.dataclass(frozen=True)
class Reference:
  """What evaluations compare against: features, their Gaussian fit and optional images.

  Build it once per run (the fit of 10k features takes seconds) and share it.
  `images` (uint8 NCHW, a few hundred) enables generated-vs-reference MS-SSIM.
  """
  features: np.ndarray
  statistics: dict[str, np.ndarray]
  images: torch.Tensor | None = None


def make_reference(features: np.ndarray, images: torch.Tensor | None = None) -> Reference:
  """Returns a `Reference` of these features (with their FID statistics) and optional images."""
  if images is not None:
    fidelity.check_uint8_nchw(images)
  return Reference(features, fidelity.fid_statistics(features), images)
