"""Datasets for training and evaluation, chosen by `config.data`.

`data.dataset` is 'shapes' (built in, procedural), 'tfds:NAME' or
'folder:PATH'. The TFDS and folder readers are imported only when asked for,
so `shapes` runs without TensorFlow.

  validate_data_config(config.data)
  train_iter = make_train_loader(config.data, global_batch_size=..., seed=...)
  batch = next(train_iter)  # {'image': float32 [local_batch, H, W, 3] in [-1, 1]}
  # batch i depends on (seed, i) alone: start_step=s starts at batch s, as a resumed run does
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


def make_source(data_config, split: str, seed: int | None = None):
  """Returns the random-access source of uint8 [image_size, image_size, 3] RGB images for `split`.

  `seed` decides which images the splits hold (hold-outs, rendered shapes): by default
  data.split_seed, so runs of any config.seed train and are scored on the same images.
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
                       strict=data_config.strict, seed=seed)


def check_dataset(data_config, splits=('train',)) -> None:
  """Returns None once data.dataset opens and holds images in each split; a one-line ValueError says why not.

  Runs before a workdir is created or written, so an empty folder or a TFDS dataset that can't be had
  costs seconds and leaves nothing behind (the resized cache it builds is needed for training anyway).
  """
  for split in dict.fromkeys(splits):
    if not len(make_source(data_config, split)):
      raise ValueError(f'data.dataset={data_config.dataset!r} holds no images in its {split!r} split; '
                       f'give a dataset with images ({_VALID_FORMS}).')


def make_train_loader(data_config, *, global_batch_size: int, seed: int,
                      process_index: int = 0, process_count: int = 1, start_step: int = 0):
  """Returns an iterator of {'image': float32 [local_batch, H, W, 3] in [-1, 1]}, from step start_step's batch.

  Infinite, reshuffled every epoch, and this process's rows of each global batch only.
  """
  dataset = loader.train_dataset(
      make_source(data_config, 'train'), global_batch_size=global_batch_size, seed=seed,
      flip=data_config.random_flip, process_index=process_index,
      process_count=process_count, start_step=start_step)
  return loader.to_iterator(dataset, data_config.num_workers)


def load_split(data_config, split: str) -> np.ndarray:
  """Returns every image of `split` as one uint8 [N, image_size, image_size, 3] array (for data.on_device)."""
  source = make_source(data_config, split)
  chunk = 4096  # bounds the renderer's temporaries for `shapes`
  return np.concatenate([loader.read_images(source, np.arange(start, min(start + chunk, len(source))))
                         for start in range(0, len(source), chunk)])


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
