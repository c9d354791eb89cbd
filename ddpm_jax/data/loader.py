"""Grain pipelines over a random-access source: the training loader and the eval iterator.

Both take a source (`__len__`, `__getitem__(i) -> uint8 [H, W, 3]`, and
optionally grain's batched `_getitems(indices)`), so they are tested on small
fake sources; `ddpm_jax.data` wires them to the config. The training pipeline
also reads labels (`with_labels`) from sources that have them
(`read_labels(indices) -> int32 [len(indices)]`), row for row with the images.

The training pipeline's elements are whole batches, not examples: grain's
per-element path (index shuffling, read metrics) costs ~60-100 µs, which per
image capped the loader at ~2,400 images/s on 2 cores (BENCHMARKS.md). Per
batch it is noise, and the shuffle, the read and the flips are vectorised.
"""
import functools

import grain
import numpy as np

from ddpm_jax.core import keys, sharding
from ddpm_jax.data import shapes

# Prefetch whole batches, not examples: a few are enough to hide the read time
# and grain's default buffer (500) of 64 px float batches would take gigabytes.
_PREFETCH_BATCHES = 4
# One thread reads ahead while the training loop runs. A second one does not
# read faster (the GIL serialises most of a batch's work) and, on 2 busy cores,
# halved the rate, probably from GIL contention with the consumer (BENCHMARKS.md).
_READ_THREADS = 1
# Epoch orders kept per reader: near an epoch boundary the prefetching threads
# (or, with few batches an epoch, the whole buffer) read from a few epochs at once.
_CACHED_EPOCHS = 4


def read_images(source, indices: np.ndarray) -> np.ndarray:
  """Returns uint8 [len(indices), H, W, 3]: the source's images at `indices`, in that order."""
  if isinstance(source, shapes.ShapesSource):
    # It has no `_getitems`, but draws any set of indices in one vectorised call.
    return shapes.render_shapes(source.seed, source.split, indices, source.image_size)
  if hasattr(source, '_getitems'):  # grain's batched read, e.g. one memmap gather
    return np.stack(source._getitems(indices))  # pylint: disable=protected-access
  return np.stack([source[int(index)] for index in indices])


def read_labels(source, indices: np.ndarray) -> np.ndarray:
  """Returns int32 [len(indices)]: the class ids of the source's images at `indices`, in that order."""
  return np.asarray(source.read_labels(np.asarray(indices)), np.int32)


class EpochBatches:
  """A grain `map_with_index` transform: step -> uint8 batch, this process's rows of the global batch.

  Epoch e's order is a permutation of the whole dataset drawn from (seed, e)
  alone; global batch b is the b-th run of `global_batch_size` examples of it, and
  a process reads its `rows` of that (`sharding.process_rows`). So the processes'
  batches are disjoint, together they are exactly the batch one process would
  read, whatever the process count, and any step can be read first, by any
  worker, with no state to carry. An epoch's remainder is dropped. With
  `with_labels` a batch is {'image': uint8, 'label': int32}, the labels of those rows.
  """

  def __init__(self, source, *, global_batch_size: int, rows: slice, seed: int, with_labels: bool = False):
    self.source = source
    self.with_labels = with_labels
    self.global_batch_size = global_batch_size
    self.rows = rows
    self.seed = seed
    self.batches_per_epoch = len(source) // global_batch_size
    self._make_cache()

  def _make_cache(self) -> None:
    self._epoch_order = functools.lru_cache(maxsize=_CACHED_EPOCHS)(self._draw_epoch_order)

  def _draw_epoch_order(self, epoch: int) -> np.ndarray:
    """Returns the dataset's indices in epoch `epoch`'s shuffled order."""
    return keys.host_order_rng(self.seed, epoch).permutation(len(self.source))

  def __call__(self, step: int, batch: int) -> np.ndarray | dict[str, np.ndarray]:
    """Returns this process's rows of batch `batch` of the epoch that global step `step` falls in."""
    order = self._epoch_order(step // self.batches_per_epoch)
    start = batch * self.global_batch_size
    indices = order[start:start + self.global_batch_size][self.rows]
    images = read_images(self.source, indices)
    if not self.with_labels:
      return images
    return {'image': images, 'label': read_labels(self.source, indices)}

  def __getstate__(self) -> dict:
    # Sent to worker processes without the cached orders (nor the unpicklable cache).
    return {k: v for k, v in self.__dict__.items() if k != '_epoch_order'}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._make_cache()


class RandomFlips:
  """A grain `map_with_index` transform: mirrors each image of step `step`'s batch with probability 1/2.

  The coin flips are drawn for the whole global batch from (seed, step), and each
  process takes its rows' flips, so they too do not depend on the process count.
  A labelled batch ({'image', 'label'}) keeps its labels: a mirror image is the same class.
  """

  def __init__(self, seed: int, *, global_batch_size: int, rows: slice):
    self.seed, self.global_batch_size, self.rows = seed, global_batch_size, rows

  def __call__(self, step: int, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    flips = keys.host_flip_rng(self.seed, step).random(self.global_batch_size)[self.rows] < 0.5
    if isinstance(batch, dict):
      return {**batch, 'image': flip_batch(batch['image'], flips)}
    return flip_batch(batch, flips)


def flip_batch(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """Returns `images` [N, H, W, C] with those where `flips` [N] is True mirrored left-right, in place."""
  flipped = np.flatnonzero(flips)
  chosen = images[flipped]
  mirrored = np.empty_like(chosen)
  # A channel at a time: reversing W of [..., W, 3] at once makes numpy's
  # inner loop 3 bytes long, 5x slower (3.5 vs 0.7 ms for 64 images at 64 px).
  for channel in range(images.shape[-1]):
    mirrored[..., channel] = chosen[:, :, ::-1, channel]
  images[flipped] = mirrored
  return images


def to_model_input(batch: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Returns {'image': float32 images in [-1, 1]} from a uint8 batch, with its 'label's if it is labelled."""
  if isinstance(batch, dict):
    return {**to_model_input(batch['image']), 'label': batch['label']}
  # float32 constants: a float64 scalar makes numpy take a slow mixed-precision
  # path (13 ms vs 0.6 ms a batch); in place, to skip a temporary.
  scaled = batch.astype(np.float32)
  scaled /= np.float32(127.5)
  scaled -= np.float32(1.0)
  return {'image': scaled}


def train_dataset(source, *, global_batch_size: int, seed: int, flip: bool,
                  process_index: int = 0, process_count: int = 1, start_step: int = 0,
                  with_labels: bool = False) -> grain.MapDataset:
  """Returns this process's infinite MapDataset of shuffled, flipped float batches, from batch start_step on.

  Each element is {'image': float32 [local_batch, H, W, 3]}, plus 'label': int32 [local_batch]
  with_labels.

  Batch i (element i - start_step) is training step i's: `repeat` makes the epoch's
  batch numbers an infinite sequence, `EpochBatches` reads each from its epoch's
  order, and the flips are drawn per batch from (seed, i), so each epoch has its
  own order and its own flips, and a run resumed at step s reads exactly the
  batches from s on. Each element is this process's rows of the global batch;
  the processes' rows together form it.
  """
  shard = dict(global_batch_size=global_batch_size,
               rows=sharding.process_rows(global_batch_size, process_index, process_count))
  batches = EpochBatches(source, seed=seed, with_labels=with_labels, **shard)
  if batches.batches_per_epoch == 0:
    local = shard['rows'].stop - shard['rows'].start
    raise ValueError(
        f'The dataset has {len(source)} training examples, fewer than one batch of '
        f'{global_batch_size} ({process_count} process(es) x {local}); '
        'use a larger dataset or a smaller training.batch_size.')
  dataset = grain.MapDataset.range(batches.batches_per_epoch).repeat().map_with_index(batches)
  if flip:
    dataset = dataset.map_with_index(RandomFlips(seed, **shard))
  # A slice keeps the parent's indices: element 0 is batch start_step, with its epoch order and flips.
  return dataset[start_step:].map(to_model_input)


def to_iterator(dataset: grain.MapDataset, num_workers: int,
                num_threads: int = _READ_THREADS) -> grain.DatasetIterator:
  """Returns an iterator over `dataset`, read by threads or worker processes."""
  read_options = grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=_PREFETCH_BATCHES)
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
