"""`folder:PATH`: every JPEG, PNG, WebP and BMP image under a directory, at any depth.

- Splits: 'train' and 'test' are both every image in the folder. For a user's
  own unlabelled folder, FID against the training images is the standard
  reference (as for FFHQ or LSUN); there is no held-out set to carve.
- Order: sorted by path relative to PATH, so a folder always reads the same.
- Labels: an image's class is its first-level subfolder (`PATH/<class>/...`, at
  any depth below it); the classes are those subfolders' names, sorted. Images
  directly in PATH have none (-1): an error when labels are asked for.
- Extensions are matched case-insensitively. Hidden files and directories
  (a name starting with '.', e.g. macOS `._photo.jpg` companions) are not
  read; other non-image files are ignored, with a count in the log. Symlinked
  files are read; symlinked directories are not followed (they can loop).
- Unreadable images (corrupt, truncated, not really an image) are skipped
  with a count and a few example paths in the log; with `strict=True` the
  first one raises a ValueError naming the file.
- Colour: see `preprocess.to_rgb` (transparency is composited on white).
  Photos are turned upright by their EXIF orientation tag, as viewers show
  them. (TFDS images are not: TFDS's own decoder ignores the tag.)
- Cache: `<root>/folder/<folder name>-<hash of its absolute path>/
  <size>px-<fingerprint>.npy` and its labels `<size>px-<fingerprint>_labels.npy`,
  <root> as in `cache.py` (by default
  ~/.cache/ddpm_jax; never inside PATH unless data.data_dir points there).
  The fingerprint covers every image's relative path, size and mtime, so
  adding, removing or replacing a file builds a new cache. Caches of older
  versions of the folder are left in place and may be deleted freely. A cache
  written before labels were cached serves unlabelled reads as it is and is
  rebuilt, with labels, the first time labels are asked for.
"""
import hashlib
import os

from absl import logging
import numpy as np

from ddpm_jax import paths
from ddpm_jax.data import cache
from ddpm_jax.data import preprocess

IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.png', '.webp')
SPLITS = ('train', 'test')
_EXAMPLES_LOGGED = 5


def folder_source(path: str, split: str, *, image_size: int, data_dir: str,
                  strict: bool, seed: int, with_labels: bool = False) -> cache.CachedImages:
  """Returns a random-access source of uint8 [image_size, image_size, 3] images of folder `path`, and their classes.

  with_labels: raise a one-line ValueError if an image lies directly in `path` (it has no class).
  """
  del seed  # both splits are the whole folder in sorted order: nothing is random
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r} for folder:{path}; valid splits: {SPLITS}.')
  root = _existing_folder(path)
  files = list_images(root)
  if not files:
    raise ValueError(
        f'folder:{path} holds no images ({", ".join(IMAGE_EXTENSIONS)}, at any depth).')
  names, labels = classes_of(files)
  if with_labels:
    _check_all_in_classes(path, files, labels)
  cache_path = _cache_path(root, files, image_size, data_dir)
  labels_path = cache_path[:-len('.npy')] + '_labels.npy'
  if os.path.exists(cache_path) and (os.path.exists(labels_path) or not with_labels):
    logging.info('folder:%s: reading %s', path, cache_path)
  else:
    if os.path.exists(cache_path):
      logging.info('folder:%s: %s was cached without labels; rebuilding it with them', path, cache_path)
    _build_cache(root, files, labels, cache_path, labels_path, image_size=image_size, strict=strict)
  # A cache of an older version has no labels file: its images are read as they are, its labels cannot be.
  has_labels = os.path.exists(labels_path)
  return cache.CachedImages(cache_path, labels_path=labels_path if has_labels else None, class_names=names)


def classes_of(files: list[str]) -> tuple[tuple[str, ...], list[int]]:
  """Returns (class names: the first-level subfolders, sorted; each file's class id, -1 for files in the root)."""
  firsts = [relative.split(os.sep)[0] if os.sep in relative else None for relative in files]
  names = tuple(sorted({first for first in firsts if first is not None}))
  ids = {name: index for index, name in enumerate(names)}
  return names, [ids[first] if first is not None else -1 for first in firsts]


def _check_all_in_classes(path: str, files: list[str], labels: list[int]) -> None:
  """Returns None if every image lies in a class subfolder; else a one-line ValueError naming some that do not."""
  in_root = [relative for relative, label in zip(files, labels) if label < 0]
  if in_root:
    raise ValueError(
        f'folder:{path} has {len(in_root)} images directly in it (e.g. {in_root[:3]}), which have no class: '
        'a class-conditional run (model.num_classes > 0) reads each image\'s class from its first-level '
        'subfolder (PATH/<class>/...); move them into class subfolders, or set model.num_classes=0.')


def _existing_folder(path: str) -> str:
  """Returns the real absolute path of `path`; raises a one-line ValueError if it is not a directory."""
  root = os.path.realpath(os.path.expanduser(path))
  if not os.path.isdir(root):
    what = 'is not a directory' if os.path.exists(root) else 'does not exist'
    raise ValueError(f'folder:{path} {what}; set data.dataset to folder:<a directory of images>.')
  return root


def list_images(root: str) -> list[str]:
  """Returns the sorted relative paths of the image files under `root`; logs what it ignores."""
  images, ignored = [], []
  for directory, subdirectories, names in os.walk(root):
    subdirectories[:] = [d for d in subdirectories if not d.startswith('.')]
    for name in names:
      if name.startswith('.'):
        continue
      relative = os.path.relpath(os.path.join(directory, name), root)
      is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
      (images if is_image else ignored).append(relative)
  if ignored:
    logging.warning('%s: ignored %d files without an image extension, e.g. %s',
                    root, len(ignored), sorted(ignored)[:_EXAMPLES_LOGGED])
  return sorted(images)


def fingerprint(root: str, files: list[str]) -> str:
  """Returns a hex digest of the files' relative paths, sizes and modification times."""
  digest = hashlib.sha256()
  for relative in files:
    stat = os.stat(os.path.join(root, relative))
    digest.update(f'{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode('utf-8', 'surrogateescape'))
  return digest.hexdigest()


def _cache_path(root: str, files: list[str], image_size: int, data_dir: str) -> str:
  """Returns the cache file for this folder, its current contents and `image_size`."""
  folder_id = hashlib.sha256(root.encode('utf-8', 'surrogateescape')).hexdigest()[:8]
  name = f'{os.path.basename(root) or "root"}-{folder_id}'
  return os.path.join(cache.cache_root(data_dir, paths.cache_root()), 'folder', name,
                      f'{image_size}px-{fingerprint(root, files)[:16]}.npy')


def _build_cache(root: str, files: list[str], labels: list[int], cache_path: str, labels_path: str, *,
                 image_size: int, strict: bool) -> None:
  """Returns None; decodes every file of `root` into `cache_path`, skipping or failing on bad ones.

  The labels of the images kept go to `labels_path`, written after the images: a cache
  with a labels file is complete.
  """
  skipped = []

  def decode(relative: str):
    full_path = os.path.join(root, relative)
    try:
      return preprocess.decode_image(full_path, image_size, apply_exif_orientation=True)
    except Exception as error:  # pylint: disable=broad-except  # PIL raises many types for bad data
      if strict:
        raise ValueError(
            f'Unreadable image {full_path} ({type(error).__name__}: {error}); fix or remove it, '
            'or set data.strict=False to skip unreadable images.') from error
      skipped.append(relative)
      return None

  images = preprocess.map_ordered(decode, files, preprocess.default_num_threads())
  count = cache.write_cache(cache_path, images, max_count=len(files), image_size=image_size,
                            description=f'Caching {root} at {image_size}px')
  if skipped:
    logging.warning('%s: skipped %d unreadable images, e.g. %s',
                    root, len(skipped), sorted(skipped)[:_EXAMPLES_LOGGED])
  if count == 0:
    os.remove(cache_path)
    raise ValueError(f'folder:{root} has no readable images; all {len(files)} failed to decode.')
  unread = set(skipped)
  kept_labels = [label for relative, label in zip(files, labels) if relative not in unread]
  cache.save_atomic(labels_path, np.asarray(kept_labels, np.int64))
  logging.info('%s: cached %d images at %s', root, count, cache_path)
