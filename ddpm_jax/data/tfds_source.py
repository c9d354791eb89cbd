"""`tfds:NAME`: any TFDS dataset with an 'image' feature, resized once into the cache.

Splits
- food101, the study's split: TFDS's train and validation merged (101,000
  images); 20 images of each class, chosen from data.split_seed, are 'test' (2,020),
  the rest 'train'.
- Every other dataset: TFDS's own 'train' and 'test'. Without a 'test' split,
  'test' is TFDS's 'validation'; without either, 'test' is a 2% hold-out of
  TFDS's 'train' chosen from data.split_seed, and 'train' is the other 98%.

Labels: the ClassLabel feature named 'label', or else the dataset's only
ClassLabel feature; its names are the source's `class_names`. A dataset with
neither has no labels (class_names ()).

Cache: `<root>/tfds/<name>[/<config>]/<version>/<TFDS split>_<size>px.npy`
plus `<TFDS split>_labels.npy` (-1 where there is no label feature; for a
label feature of another name, `<TFDS split>_labels_<feature>.npy`); <root>
as in `cache.py`, by default `<TFDS data dir>/ddpm_jax_cache`. The cache holds
whole TFDS splits; a seeded hold-out is a list of rows over it, so another
seed costs no rebuild.

A dataset that is not prepared is downloaded and prepared as `tfds.load` would
do; when that fails, the error is one line: TFDS's reason and how to fix it.
Its download host is asked once first, so an offline machine hears so in
seconds, not after the 3.5 minutes of TFDS's retries.
"""
import functools
import os
import urllib.error
import urllib.parse
import urllib.request

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ddpm_jax.core import keys
from ddpm_jax.data import cache
from ddpm_jax.data import preprocess

SPLITS = ('train', 'test')
# Datasets split the study's way: TFDS splits merged, then this many images of
# each class held out as 'test'.
STUDY_SPLITS = {'food101': ('train+validation', 20)}
HOLDOUT_FRACTION = 0.02
# Seconds to wait for a download host to answer before calling the machine offline (TFDS's own
# downloader retries a failed connection 10 times with backoff: 212 s for CIFAR-10 offline).
REACH_TIMEOUT_S = 5
_NO_LABEL = -1
# ('per_class', images per class) or ('fraction', fraction of the split).
Holdout = tuple[str, float]


def tfds_source(name: str, split: str, *, image_size: int, data_dir: str, seed: int,
                download: bool = True) -> cache.CachedImages:
  """Returns a random-access source of uint8 [image_size, image_size, 3] images of tfds:`name`."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r} for tfds:{name}; valid splits: {SPLITS}.')
  _hide_gpus_from_tensorflow()
  builder = _builder(name, data_dir)
  _check_image_feature(builder, name)
  if builder.name not in STUDY_SPLITS:  # resolving the split needs TFDS's split list
    _prepare(builder, name, download)
  tfds_split, holdout = resolve_split(builder.name, split, set(builder.info.splits.keys()))
  feature = label_feature(builder.info.features)
  images_path, labels_path = _cache_paths(builder, tfds_split, image_size, data_dir, feature)
  if os.path.exists(images_path) and os.path.exists(labels_path):
    logging.info('tfds:%s: reading %s', name, images_path)
  else:
    _prepare(builder, name, download)
    _build_cache(builder, tfds_split, images_path, labels_path, image_size, feature)
  labelled = dict(labels_path=labels_path, class_names=class_names(builder.info.features, feature))
  if holdout is None:
    return cache.CachedImages(images_path, **labelled)
  return cache.CachedImages(images_path, split_rows(split, holdout, np.load(labels_path), seed), **labelled)


def label_feature(features: tfds.features.FeaturesDict) -> str | None:
  """Returns the name of the feature that holds each example's class: 'label' or the only ClassLabel; else None."""
  class_labels = [key for key in features.keys() if isinstance(features[key], tfds.features.ClassLabel)]
  if 'label' in class_labels:
    return 'label'
  if len(class_labels) == 1:
    return class_labels[0]
  return 'label' if 'label' in features.keys() else None  # what the cache has always recorded


def class_names(features: tfds.features.FeaturesDict, feature: str | None) -> tuple[str, ...]:
  """Returns the names of `feature`'s classes, by id; () when it is not a ClassLabel (no labels)."""
  if feature is None or not isinstance(features[feature], tfds.features.ClassLabel):
    return ()
  return tuple(features[feature].names)


def _hide_gpus_from_tensorflow() -> None:
  """Returns None; keeps TensorFlow (used by TFDS for reading) off the accelerators JAX uses."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices; too late, and already decided
    pass


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Returns TFDS's builder for `name`; raises a one-line ValueError for an unknown name."""
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as error:
    reason = str(error).splitlines()[0]
    raise ValueError(f'tfds:{name}: {reason} See `tfds.list_builders()` for the names.') from None


def _check_image_feature(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """Returns None if `builder` has an encoded-image feature named 'image'; else raises ValueError."""
  features = builder.info.features
  if 'image' not in features.keys() or not isinstance(features['image'], tfds.features.Image):
    raise ValueError(f'tfds:{name} has no image feature named "image" (its features: '
                     f'{sorted(features.keys())}); ddpm_jax reads image datasets.')


def _prepare(builder: tfds.core.DatasetBuilder, name: str, download: bool) -> None:
  """Returns None once `builder`'s data is on disk; raises a one-line ValueError if it cannot be."""
  if builder.is_prepared():
    return
  if not download:
    reason = f'it is not prepared in {builder.data_dir_root} and downloading is off'
  else:
    reason = unreachable(download_urls(builder))  # seconds, where TFDS's downloader retries for minutes
    if not reason:
      try:
        builder.download_and_prepare()
        return
      except Exception as error:  # pylint: disable=broad-except  # TFDS fails in many ways offline
        reason = ' '.join(str(error).split())[:400] or type(error).__name__
  hint = (f'set data.data_dir to the TFDS data_dir that holds {builder.name}, or prepare it '
          f'with `tfds build {builder.name} --data_dir={builder.data_dir_root}`')
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    hint += f' after placing the manual download in {builder.data_dir_root}/downloads/manual'
  raise ValueError(f'tfds:{name} is not available: {reason}. To fix: {hint}.')


def download_urls(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Returns the URLs TFDS would download `builder`'s data from (its checksums file); [] when it lists none."""
  try:
    return sorted(builder.url_infos or {})
  except Exception:  # pylint: disable=broad-except  # builders without a checksums file: let TFDS try
    return []


def unreachable(urls: list[str], timeout: float = REACH_TIMEOUT_S) -> str:
  """Returns why none of the URLs' hosts answers (one line), or '' when one does or there is none to ask.

  One request per host, through the proxies the environment sets, as TFDS's downloader would go. Any HTTP
  answer, even an error status, means the network works: only failing to connect counts as offline.
  """
  hosts = {f'{parts.scheme}://{parts.netloc}/': parts.netloc for parts in map(urllib.parse.urlsplit, urls)
           if parts.scheme in ('http', 'https')}
  reasons = []
  for url, host in hosts.items():
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout).close()
      return ''
    except urllib.error.HTTPError:
      return ''
    except (OSError, ValueError) as error:  # URLError, timeouts, refused connections
      reasons.append(f'{host}: {getattr(error, "reason", error)}')
  return f'the download host does not answer, so this machine looks offline ({"; ".join(reasons)})' if reasons else ''


def resolve_split(dataset: str, split: str, available: set[str]) -> tuple[str, Holdout | None]:
  """Returns (the TFDS split to cache, how 'test' is held out of it, or None if it is not).

  `available` is the set of TFDS's split names for `dataset`.
  """
  if dataset in STUDY_SPLITS:
    merged, per_class = STUDY_SPLITS[dataset]
    return merged, ('per_class', per_class)
  if 'train' not in available:
    raise ValueError(f'tfds:{dataset} has no train split (it has {sorted(available)}); '
                     'ddpm_jax needs one to train on.')
  for held_out in ('test', 'validation'):
    if held_out in available:
      return (held_out if split == 'test' else 'train'), None
  return 'train', ('fraction', HOLDOUT_FRACTION)


def split_rows(split: str, holdout: Holdout, labels: np.ndarray, seed: int) -> np.ndarray:
  """Returns the sorted cache rows of `split` when 'test' is held out of the cached split."""
  rng = keys.holdout_rng(seed)
  kind, amount = holdout
  if kind == 'per_class':
    test = per_class_holdout(labels, amount, rng)
  else:
    count = max(1, round(amount * len(labels)))
    test = np.sort(rng.choice(len(labels), size=count, replace=False))
  return test if split == 'test' else np.setdiff1d(np.arange(len(labels)), test)


def per_class_holdout(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
  """Returns the sorted indices of `per_class` randomly chosen examples of every label."""
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) < per_class:
      raise ValueError(f'Class {label} has {len(members)} images; the study split holds out '
                       f'{per_class} of every class as test.')
    chosen.append(rng.choice(members, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def _cache_paths(builder: tfds.core.DatasetBuilder, tfds_split: str, image_size: int,
                 data_dir: str, feature: str | None) -> tuple[str, str]:
  """Returns the paths of the image cache and the label file (of `feature`) of one TFDS split."""
  default_root = os.path.join(tfds.core.constants.DATA_DIR, 'ddpm_jax_cache')
  directory = os.path.join(cache.cache_root(data_dir, default_root), 'tfds',
                           *builder.info.full_name.split('/'))
  # 'label' (or none) keeps the name caches always had, so they are read as they are.
  labels_name = 'labels' if feature in (None, 'label') else f'labels_{feature}'
  return (os.path.join(directory, f'{tfds_split}_{image_size}px.npy'),
          os.path.join(directory, f'{tfds_split}_{labels_name}.npy'))


def _build_cache(builder: tfds.core.DatasetBuilder, tfds_split: str, images_path: str,
                 labels_path: str, image_size: int, feature: str | None) -> None:
  """Returns None; decodes one TFDS split into the image cache and its labels file (`feature`, -1 if None)."""
  wanted = {'image': True, **({feature: True} if feature else {})}
  # Images stay encoded in TFDS: PIL decodes them in threads (at a reduced
  # JPEG scale), as it does for folders, so both readers preprocess alike.
  # Other features (masks, boxes, attributes) are not read at all.
  decoders = tfds.decode.PartialDecoding(wanted, decoders={'image': tfds.decode.SkipDecoding()})
  dataset = builder.as_dataset(split=tfds_split, shuffle_files=False, decoders=decoders)
  count = int(dataset.cardinality())
  count = count if count >= 0 else builder.info.splits[tfds_split].num_examples
  labels = []

  def encoded_images():
    for example in tfds.as_numpy(dataset):
      labels.append(example[feature] if feature else _NO_LABEL)
      yield example['image']

  decode = functools.partial(preprocess.decode_image, image_size=image_size)
  images = preprocess.map_ordered(decode, encoded_images(), preprocess.default_num_threads())
  written = cache.write_cache(images_path, images, max_count=count, image_size=image_size,
                              description=f'Caching tfds:{builder.name} {tfds_split} at {image_size}px')
  if written != count:
    os.remove(images_path)
    raise ValueError(f'tfds:{builder.name} {tfds_split}: expected {count} images, read {written}.')
  cache.save_atomic(labels_path, np.asarray(labels, dtype=np.int64))
  logging.info('tfds:%s: cached %d images of %s at %s', builder.name, count, tfds_split, images_path)
