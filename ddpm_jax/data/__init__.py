"""Datasets for training and evaluation, chosen by `config.data`.

`data.dataset` is 'shapes' (built in, procedural), 'tfds:NAME' or
'folder:PATH'. The TFDS and folder readers are imported only when asked for,
so `shapes` runs without TensorFlow.

  validate_data_config(config.data)
  train_iter = make_train_loader(config.data, global_batch_size=..., seed=...)
  batch = next(train_iter)  # {'image': float32 [local_batch, H, W, 3] in [-1, 1]}
  # batch i depends on (seed, i) alone: start_step=s starts at batch s, as a resumed run does

Labels: every source has `class_names` (() when the dataset has none) and
`read_labels(indices)`: TFDS's ClassLabel feature, a folder's first-level
subfolders, the shape's kind for `shapes`. `with_labels=True` adds
'label': int32 [local_batch] to the training batches (and labels to
`load_split`), after checking that every training image has one.
"""
import numpy as np

from ddpm_jax.data import loader
from ddpm_jax.data import shapes

SPLITS = ('train', 'test')
_VALID_FORMS = "'shapes', 'tfds:NAME' or 'folder:PATH'"


def parse_dataset(dataset: str) -> tuple[str, str]:
  """Returns (kind, argument) of a `data.dataset` value: ('shapes', ''), ('tfds', NAME), ('folder', PATH)."""
  kind, _, argument = str(dataset).partition(':')
  if dataset == 'shapes' or (kind in ('tfds', 'folder') and argument):
    return kind, argument
  raise ValueError(f'data.dataset={dataset!r} is not a valid dataset; use {_VALID_FORMS}.')


def validate_data_config(data_config) -> None:
  """Returns None; raises a one-line ValueError for a data.dataset of no known form (no I/O).

  Each key's type and range were checked with the rest of the typed config, the batch's split over
  processes and devices by config/checks.py.
  """
  parse_dataset(data_config.dataset)


def make_source(data_config, split: str, seed: int | None = None, with_labels: bool = False):
  """Returns the random-access source of uint8 [image_size, image_size, 3] RGB images for `split`.

  `seed` decides which images the splits hold (hold-outs, rendered shapes): by default
  data.split_seed, so runs of any config.seed train and are scored on the same images.
  with_labels: a folder must hold every image in a class subfolder, and its cache have labels.
  """
  if seed is None:
    seed = data_config.split_seed
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid splits: {SPLITS}.')
  kind, argument = parse_dataset(data_config.dataset)
  size, data_dir = data_config.image_size, data_config.data_dir
  if kind == 'shapes':
    return shapes.ShapesSource(image_size=size, split=split, seed=seed)
  if kind == 'tfds':
    from ddpm_jax.data.tfds_source import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source(argument, split, image_size=size, data_dir=data_dir, seed=seed)
  from ddpm_jax.data.folder_source import folder_source  # pylint: disable=g-import-not-at-top
  return folder_source(argument, split, image_size=size, data_dir=data_dir,
                       strict=data_config.strict, seed=seed, with_labels=with_labels)


def class_names(data_config) -> tuple[str, ...]:
  """Returns the names of data.dataset's classes, by label id; () when it has no labels."""
  return tuple(getattr(make_source(data_config, 'train'), 'class_names', ()))


def check_dataset(data_config, splits=('train',), num_classes: int = 0) -> None:
  """Returns None once data.dataset opens and holds images in each split; a one-line ValueError says why not.

  num_classes > 0 (a class-conditional run's model.num_classes): the train split must also have a
  label for every image, and exactly num_classes classes.
  Runs before a workdir is created or written, so an empty folder or a TFDS dataset that can't be had
  costs seconds and leaves nothing behind (the resized cache it builds is needed for training anyway).
  """
  if num_classes > 0:  # first: a folder with images outside class subfolders fails before it is cached
    _check_classes(data_config, num_classes)
  for split in dict.fromkeys(splits):
    if not len(make_source(data_config, split)):
      raise ValueError(f'data.dataset={data_config.dataset!r} holds no images in its {split!r} split; '
                       f'give a dataset with images ({_VALID_FORMS}).')


def _check_classes(data_config, num_classes: int) -> None:
  """Returns None if every training image has a label and the dataset has num_classes classes; else a ValueError."""
  source = make_source(data_config, 'train', with_labels=True)
  _all_labels(source, data_config, num_classes)
  count = len(source.class_names)
  if count != num_classes:
    raise ValueError(f'model.num_classes={num_classes} differs from the {count} classes of '
                     f'data.dataset={data_config.dataset!r}; set model.num_classes={count}.')


def _all_labels(source, data_config, num_classes: int | None = None) -> np.ndarray:
  """Returns int32 [N]: the class of each of the source's images; a one-line ValueError if any has none."""
  wanted = f'model.num_classes={num_classes}' if num_classes else 'a class-conditional run'
  if not getattr(source, 'class_names', ()):
    raise ValueError(f'data.dataset={data_config.dataset!r} has no class labels, so {wanted} has nothing to '
                     'condition on: use a labelled dataset (a TFDS set with a ClassLabel feature, folder:PATH of '
                     'class subfolders, or shapes) or set model.num_classes=0.')
  labels = loader.read_labels(source, np.arange(len(source)))
  unlabelled = int(np.sum(labels < 0))
  if unlabelled:
    raise ValueError(f'data.dataset={data_config.dataset!r} has {unlabelled} of {len(labels)} training images '
                     f'without a label, which {wanted} cannot train on; use a dataset labelled throughout or set '
                     'model.num_classes=0.')
  return labels


def make_train_loader(data_config, *, global_batch_size: int, seed: int,
                      process_index: int = 0, process_count: int = 1, start_step: int = 0,
                      with_labels: bool = False):
  """Returns an iterator of {'image': float32 [local_batch, H, W, 3] in [-1, 1]}, from step start_step's batch.

  Infinite, reshuffled every epoch, and this process's rows of each global batch only.
  with_labels: each batch also has 'label': int32 [local_batch], each image's class.
  """
  source = make_source(data_config, 'train', with_labels=with_labels)
  if with_labels:
    _all_labels(source, data_config)
  dataset = loader.train_dataset(
      source, global_batch_size=global_batch_size, seed=seed,
      flip=data_config.random_flip, process_index=process_index,
      process_count=process_count, start_step=start_step, with_labels=with_labels)
  return loader.to_iterator(dataset, data_config.num_workers)


def load_split(data_config, split: str, with_labels: bool = False):
  """Returns every image of `split` as one uint8 [N, image_size, image_size, 3] array (for data.on_device).

  with_labels: returns (images, labels int32 [N]).
  """
  source = make_source(data_config, split, with_labels=with_labels)
  chunk = 4096  # bounds the renderer's temporaries for `shapes`
  images = np.concatenate([loader.read_images(source, np.arange(start, min(start + chunk, len(source))))
                           for start in range(0, len(source), chunk)])
  return (images, _all_labels(source, data_config)) if with_labels else images


def make_eval_iterator(data_config, split: str, *, batch_size: int,
                       max_examples: int | None, seed: int | None = None):
  """Returns an iterator of uint8 [<=batch_size, H, W, 3] batches of `split`, in fixed order.

  Un-augmented and unsharded; it stops after `max_examples` examples (or at the
  end of the split, if that comes first).
  """
  if max_examples is not None and max_examples < 1:
    raise ValueError(f'max_examples={max_examples!r} must be positive or None.')
  dataset = loader.eval_dataset(
      make_source(data_config, split, seed), batch_size=batch_size,
      max_examples=max_examples)
  return loader.to_iterator(dataset, num_workers=0)
