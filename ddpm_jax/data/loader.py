"""Grain pipelines over a random-access source: the training loader and the eval iterator.

Both take a source (`__len__`, `__getitem__(i) -> uint8 [H, W, 3]`), so they
are tested on small fake sources; `ddpm_jax.data` wires them to the config.
"""
import grain
import numpy as np

# Prefetch whole batches, not examples: a few are enough to hide the read time
# and grain's default buffer (500) of 64 px float batches would take gigabytes.
_PREFETCH_BATCHES = 4
_READ_THREADS = 2
_SHUFFLE, _FLIP = 0, 1  # purposes folded into the base seed


def derive_seed(seed: int, purpose: int) -> int:
  """Returns a 32-bit seed for one purpose, independent of the other purposes' seeds."""
  return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Returns the per-process batch size; raises ValueError if the split is uneven."""
  if global_batch_size % process_count:
    raise ValueError(
        f'training.batch_size={global_batch_size} is not divisible by the '
        f'{process_count} processes; use a multiple of {process_count}.')
  return global_batch_size // process_count


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Returns `image` mirrored left-right with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def to_model_input(images: np.ndarray) -> dict[str, np.ndarray]:
  """Returns {'image': float32 images in [-1, 1]} from a uint8 batch."""
  # float32 constants: a float64 scalar makes numpy take a slow mixed-precision path (13 ms vs 0.6 ms a batch).
  return {'image': images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)}


def train_dataset(source, *, batch_size: int, seed: int, flip: bool,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Returns this process's infinite MapDataset of shuffled, flipped float batches.

  Each process reads every `process_count`-th example, so shards are disjoint
  and together cover the data. Batching before `repeat` keeps every batch inside
  one epoch; `repeat` folds the epoch into the shuffle and flip seeds, so each
  epoch has its own order and its own flips.
  """
  dataset = grain.MapDataset.source(source)[process_index::process_count]
  if len(dataset) < batch_size:
    raise ValueError(
        f'The dataset has {len(dataset)} training examples for this process '
        f'(of {len(source)} in all), fewer than one batch of {batch_size}; '
        'use a larger dataset or a smaller training.batch_size.')
  dataset = dataset.shuffle(seed=derive_seed(seed, _SHUFFLE))
  if flip:
    dataset = dataset.random_map(random_flip, seed=derive_seed(seed, _FLIP))
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.repeat().map(to_model_input)


def to_iterator(dataset: grain.MapDataset, num_workers: int) -> grain.DatasetIterator:
  """Returns a checkpointable iterator over `dataset`, read by threads or worker processes."""
  read_options = grain.ReadOptions(
      num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
  iter_dataset = dataset.to_iter_dataset(read_options)
  if num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(iter_dataset)


def eval_dataset(source, *, batch_size: int, max_examples: int | None) -> grain.MapDataset:
  """Returns a MapDataset of uint8 batches of the first `max_examples` examples, in order.

  Not shuffled, flipped or sharded: it is the fixed reference set for FID. The
  last batch may be smaller.
  """
  dataset = grain.MapDataset.source(source)
  if max_examples is not None:
    dataset = dataset[:max_examples]
  return dataset.batch(batch_size, drop_remainder=False)
