"""Tests for the grain training loader, the eval iterator and the dataset dispatch."""
import multiprocessing
import os
import subprocess
import sys
import types

from absl import flags
import numpy as np
from PIL import Image
import pytest

import ddpm_jax.data as data
from ddpm_jax.config import convert, schema
from ddpm_jax.data import loader

SIZE = 8


class IndexSource:
  """Fake source: example i shows i in channels 0-1 and a left-to-right ramp in channel 2."""

  def __init__(self, length):
    self.length = length

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0], image[..., 1] = index % 256, index // 256
    image[..., 2] = np.arange(SIZE) * 30
    return image


class BatchedIndexSource(IndexSource):
  """IndexSource with grain's batched read; it records the size of every read."""

  def __init__(self, length):
    super().__init__(length)
    self.reads = []

  def __getitem__(self, index):
    self.reads.append(1)
    return super().__getitem__(index)

  def _getitems(self, indices):
    self.reads.append(len(indices))
    return [IndexSource.__getitem__(self, i) for i in indices]


def decode(batch):
  """Returns (example indices, flipped flags) of a training batch of IndexSource images."""
  pixels = np.rint((batch['image'] + 1) * 127.5).astype(int)
  indices = pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 0, 1]
  flipped = pixels[:, 0, 0, 2] > pixels[:, 0, -1, 2]
  return indices, flipped


def take(iterator, num_batches):
  return [next(iterator) for _ in range(num_batches)]


def index_iterator(length, global_batch_size=4, seed=0, flip=True, start_step=0, **shard):
  dataset = loader.train_dataset(
      IndexSource(length), global_batch_size=global_batch_size, seed=seed, flip=flip, start_step=start_step, **shard)
  return loader.to_iterator(dataset, num_workers=0)


def shapes_config(**overrides):
  """Returns the typed data section of 16 px shapes with the overrides (each checked as a config's are)."""
  return convert.from_mapping({'dataset': 'shapes', 'image_size': 16, **overrides}, schema.DataConfig, 'data.')


def test_batches_have_the_local_shape_dtype_and_range():
  for process_count in (1, 2):
    iterator = data.make_train_loader(
        shapes_config(), global_batch_size=8, seed=0, process_count=process_count)
    images = next(iterator)['image']
    assert images.shape == (8 // process_count, 16, 16, 3)
    assert images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() < -0.5 and images.max() > 0.5


def test_each_epoch_is_a_new_permutation_of_whole_batches():
  # 10 examples in batches of 4: 2 batches an epoch, 2 examples dropped.
  batches = take(index_iterator(10, flip=False), 6)
  epochs = [np.concatenate([decode(b)[0] for b in batches[i:i + 2]]) for i in (0, 2, 4)]
  for epoch in epochs:
    assert len(set(epoch)) == 8 and set(epoch) <= set(range(10))
  assert len({tuple(epoch) for epoch in epochs}) == 3
  full = np.concatenate([decode(b)[0] for b in take(index_iterator(12, flip=False), 3)])
  assert sorted(full) == list(range(12)) and list(full) != list(range(12))


def test_the_order_is_set_by_the_seed():
  def order(seed):
    return np.concatenate([decode(b)[0] for b in take(index_iterator(40, seed=seed), 5)])
  np.testing.assert_array_equal(order(0), order(0))
  assert not np.array_equal(order(0), order(1))


def test_flips_are_random_reproducible_and_can_be_turned_off():
  def flips(seed, flip=True):
    decoded = [decode(b) for b in take(index_iterator(64, global_batch_size=8, seed=seed, flip=flip), 16)]
    indices, flipped = map(np.concatenate, zip(*decoded))
    return indices, flipped  # two epochs of 64 examples

  indices, flipped = flips(0)
  assert 0.35 < flipped.mean() < 0.65
  np.testing.assert_array_equal(flipped, flips(0)[1])
  assert not np.array_equal(flipped, flips(1)[1])
  # An example is flipped independently in each epoch.
  by_epoch = [dict(zip(indices[e * 64:(e + 1) * 64], flipped[e * 64:(e + 1) * 64])) for e in (0, 1)]
  assert sum(by_epoch[0][i] != by_epoch[1][i] for i in range(64)) > 10
  assert not flips(0, flip=False)[1].any()


def test_process_shards_are_disjoint_and_cover_the_epoch():
  # 40 examples, 2 processes with 4 examples a batch: 5 batches is one epoch.
  shards = [
      np.concatenate([decode(b)[0] for b in take(
          index_iterator(40, global_batch_size=8, process_index=index, process_count=2), 5)])
      for index in (0, 1)
  ]
  assert all(len(set(shard)) == 20 for shard in shards)
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == set(range(40))


def test_the_processes_batches_together_are_the_one_process_batch_flips_included():
  for process_count in (2, 4):
    parts = [take(index_iterator(48, global_batch_size=8, seed=5, process_index=index,
                                 process_count=process_count), 12) for index in range(process_count)]
    for step, whole in enumerate(take(index_iterator(48, global_batch_size=8, seed=5), 12)):
      np.testing.assert_array_equal(np.concatenate([part[step]['image'] for part in parts]), whole['image'])


def test_sources_with_a_batched_read_give_the_same_batches_and_are_read_a_batch_at_a_time():
  batched = BatchedIndexSource(40)
  iterator = loader.to_iterator(
      loader.train_dataset(batched, global_batch_size=4, seed=3, flip=True), num_workers=0)
  for want, got in zip(take(index_iterator(40, seed=3), 12), take(iterator, 12), strict=True):
    np.testing.assert_array_equal(want['image'], got['image'])
  assert batched.reads and set(batched.reads) == {4}


def test_shapes_batches_are_the_images_the_source_draws():
  source = data.make_source(shapes_config(), 'train', seed=5)
  indices = np.array([7, 0, 49_999, 7, 123])
  np.testing.assert_array_equal(
      loader.read_images(source, indices), np.stack([source[i] for i in indices]))


@pytest.fixture
def parsed_flags():
  """Marks absl flags parsed for the test: grain's workers read them, as after app.run."""
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not was_parsed:
    flags.FLAGS.unparse_flags()


@pytest.mark.usefixtures('parsed_flags')
def test_worker_processes_give_the_same_batches_from_any_start_step():
  config = shapes_config(num_workers=0)
  in_process = take(data.make_train_loader(config, global_batch_size=8, seed=2), 4)
  config = shapes_config(num_workers=2)
  workers = data.make_train_loader(config, global_batch_size=8, seed=2)
  batches = take(workers, 2)
  assert len(multiprocessing.active_children()) >= 2
  workers.close()
  resumed = data.make_train_loader(config, global_batch_size=8, seed=2, start_step=2)
  batches += take(resumed, 2)
  resumed.close()
  for expected, batch in zip(in_process, batches, strict=True):
    np.testing.assert_array_equal(expected['image'], batch['image'])


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_a_loader_started_at_a_step_continues_with_the_uninterrupted_batches_on_any_process_count(process_count):
  # 24 examples in global batches of 8: 3 batches an epoch, so steps 5..10 cross two epoch boundaries.
  uninterrupted = take(index_iterator(24, global_batch_size=8, seed=3), 11)[5:]
  resumed = [index_iterator(24, global_batch_size=8, seed=3, start_step=5, process_index=p,
                            process_count=process_count) for p in range(process_count)]
  for want in uninterrupted:
    got = np.concatenate([next(iterator)['image'] for iterator in resumed])
    np.testing.assert_array_equal(want['image'], got)
  first = take(index_iterator(24, global_batch_size=8, seed=3), 1)[0]
  assert not np.array_equal(uninterrupted[0]['image'], first['image'])


def test_eval_iterator_is_fixed_unaugmented_and_stops():
  config = shapes_config()
  batches = list(data.make_eval_iterator(
      config, 'test', batch_size=4, max_examples=10, seed=0))
  assert [b.shape for b in batches] == [(4, 16, 16, 3)] * 2 + [(2, 16, 16, 3)]
  assert all(b.dtype == np.uint8 for b in batches)
  source = data.make_source(config, 'test', seed=0)
  np.testing.assert_array_equal(np.concatenate(batches), np.stack([source[i] for i in range(10)]))


def test_folder_datasets_are_read_through_folder_source(tmp_path):
  for index in range(3):
    Image.new('RGB', (40, 30), (80 * index, 0, 0)).save(tmp_path / f'{index}.png')
  config = shapes_config(dataset=f'folder:{tmp_path}', data_dir=str(tmp_path / 'cache'))
  source = data.make_source(config, 'train', seed=0)
  assert len(source) == 3
  assert source[0].shape == (16, 16, 3) and source[0].dtype == np.uint8


def test_tfds_datasets_are_read_through_tfds_source(monkeypatch):
  calls = []
  fake = types.ModuleType('ddpm_jax.data.tfds_source')
  fake.tfds_source = lambda *args, **kwargs: calls.append((args, kwargs)) or 'source'
  monkeypatch.setitem(sys.modules, 'ddpm_jax.data.tfds_source', fake)
  config = shapes_config(dataset='tfds:food101', data_dir='/data')
  assert data.make_source(config, 'test', seed=4) == 'source'
  assert calls == [(('food101', 'test'), {'image_size': 16, 'data_dir': '/data', 'seed': 4})]


@pytest.mark.parametrize('dataset', ['imagenet', 'tfds:', 'folder:', 'shapes:big', ''])
def test_unknown_dataset_forms_are_one_line_errors(dataset):
  with pytest.raises(ValueError, match="'shapes', 'tfds:NAME' or 'folder:PATH'") as error:
    data.validate_data_config(shapes_config(dataset=dataset))
  assert repr(dataset) in str(error.value) and '\n' not in str(error.value)
  with pytest.raises(ValueError):
    data.make_source(shapes_config(dataset=dataset), 'train', seed=0)


@pytest.mark.parametrize('overrides, match', [
    ({'image_size': 4}, 'data.image_size=4'),
    ({'eval_split': 'val'}, 'data.eval_split'),
    ({'num_workers': -1}, 'data.num_workers=-1'),
])
def test_bad_config_values_are_one_line_errors(overrides, match):
  with pytest.raises(ValueError, match=match) as error:
    data.validate_data_config(shapes_config(**overrides))  # the typed section refuses it
  assert '\n' not in str(error.value)
  data.validate_data_config(shapes_config())  # the defaults pass


def test_batches_that_cannot_be_filled_are_errors():
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    data.make_train_loader(shapes_config(), global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(ValueError, match='fewer than one batch of 8'):
    loader.train_dataset(IndexSource(7), global_batch_size=8, seed=0, flip=True)
  with pytest.raises(ValueError, match=r'fewer than one batch of 8 \(2 process\(es\) x 4\)'):
    loader.train_dataset(IndexSource(7), global_batch_size=8, seed=0, flip=True,
                         process_index=1, process_count=2)


def test_shapes_needs_no_tensorflow():
  program = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'programs', 'shapes_without_tensorflow.py')
  result = subprocess.run([sys.executable, program], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


class LabelledIndexSource(IndexSource):
  """IndexSource whose example i is of class i mod 3."""
  class_names = ('a', 'b', 'c')

  def read_labels(self, indices):
    return np.asarray(indices) % 3


def labelled_iterator(length, start_step=0, **shard):
  dataset = loader.train_dataset(LabelledIndexSource(length), global_batch_size=8, seed=4, flip=True,
                                 start_step=start_step, with_labels=True, **shard)
  return loader.to_iterator(dataset, num_workers=0)


def test_labels_ride_with_their_images_through_shuffles_flips_shards_and_resumes():
  batches = take(labelled_iterator(30), 9)  # 3 batches an epoch: 3 epochs, each its own order and flips
  for batch in batches:
    indices, _ = decode(batch)
    assert batch['label'].dtype == np.int32 and batch['label'].tolist() == (indices % 3).tolist()
  assert 0.3 < np.concatenate([decode(b)[1] for b in batches]).mean() < 0.7
  unlabelled = take(index_iterator(30, global_batch_size=8, seed=4), 9)
  for batch, plain in zip(batches, unlabelled):
    assert set(plain) == {'image'}
    np.testing.assert_array_equal(batch['image'], plain['image'])  # the same images as without labels
  shards = [labelled_iterator(30, start_step=4, process_index=p, process_count=2) for p in (0, 1)]
  for want in batches[4:]:
    parts = [next(shard) for shard in shards]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), want[key])
