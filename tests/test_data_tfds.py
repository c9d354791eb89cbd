"""Tests of ddpm_jax.data.tfds_source on mocked TFDS datasets: splits, the cache, errors.

Nothing is downloaded. `tfds.testing.mock_data` replaces the dataset reader;
our fake reader encodes each example's id into its colour (solid images), so
every image that comes out of a source tells which example it was.
"""
import contextlib
import os
import time
import urllib.error
import urllib.request
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ddpm_jax.data import cache
from ddpm_jax.data import tfds_source as tfds_lib

IMAGE_SIZE = 8
FOOD101_CLASSES, PER_CLASS = 101, 22


def encode_id(example_id: int) -> np.ndarray:
  """Returns the RGB colour of example `example_id` (< 4096): base-16 digits, 16 levels apart."""
  digits = [example_id // 256, example_id // 16 % 16, example_id % 16]
  return np.array([16 * d + 8 for d in digits], np.uint8)


def decode_id(image: np.ndarray) -> int:
  """Returns the example id whose colour `image` has (JPEG's error is far below 8 levels)."""
  digits = np.rint((image.reshape(-1, 3).mean(axis=0) - 8) / 16).astype(int)
  return int(digits[0] * 256 + digits[1] * 16 + digits[2])


def ids_of(source) -> list[int]:
  return [decode_id(source[i]) for i in range(len(source))]


def fake_example(example_id: int, label: int, features) -> dict:
  """Returns example `example_id` encoded as TFDS stores it: a solid image of its colour."""
  shape = tuple(s or default for s, default in zip(features['image'].shape, (12, 20, 3)))
  example = {'image': np.broadcast_to(encode_id(example_id)[:shape[2]], shape).copy(),
             'label': label, 'id': str(example_id)}
  return features.encode_example({k: v for k, v in example.items() if k in features.keys()})


def fake_reader(examples_by_split: dict[str, list[tuple[int, int]]]):
  """Returns a stand-in for TFDS's reader of (id, label) examples that honours the decoders asked for."""

  def as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False):
    del read_config, shuffle_files
    features = builder.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):
      features, decoders = decoders.extract_features(features), decoders.decoders
    examples = [fake_example(i, label, features)
                for part in str(split).split('+') for i, label in examples_by_split[part]]
    signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype),
                                      features.get_serialized_info())
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(examples)))
    return dataset.map(lambda example: features.decode_example(example, decoders=decoders))

  return as_dataset


@contextlib.contextmanager
def mocked_tfds(examples_by_split):
  """Yields with TFDS mocked: these splits, holding these (id, label) examples."""
  split_infos = {name: mock.Mock(num_bytes=0, num_examples=len(examples))
                 for name, examples in examples_by_split.items()}
  # The mocked download needs no network: the host check answers that it is online.
  with tfds.testing.mock_data(as_dataset_fn=fake_reader(examples_by_split)), mock.patch.object(
      tfds.core.DatasetInfo, 'splits', new_callable=mock.PropertyMock, return_value=split_infos), mock.patch.object(
      tfds_lib, 'unreachable', return_value=''):
    yield


@pytest.fixture(name='data_dir')
def fixture_data_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  return str(tmp_path)


def food101_examples():
  """Returns food101-like splits: PER_CLASS images per class over train and validation."""
  examples = [(label * PER_CLASS + k, label) for label in range(FOOD101_CLASSES)
              for k in range(PER_CLASS)]
  return {'train': examples[::3] + examples[1::3], 'validation': examples[2::3]}


def test_food101_holds_out_20_images_per_class_chosen_by_the_seed(data_dir):
  def load(split, seed):
    return tfds_lib.tfds_source('food101', split, image_size=IMAGE_SIZE, data_dir=data_dir,
                                seed=seed)

  with mocked_tfds(food101_examples()):
    train, test = load('train', 0), load('test', 0)
    train_ids, test_ids = ids_of(train), ids_of(test)
    assert train[0].dtype == np.uint8 and train[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert len(test) == 20 * FOOD101_CLASSES
    assert np.bincount([i // PER_CLASS for i in test_ids]).tolist() == [20] * FOOD101_CLASSES
    assert not set(train_ids) & set(test_ids)
    assert sorted(train_ids + test_ids) == list(range(FOOD101_CLASSES * PER_CLASS))
    assert ids_of(load('test', 0)) == test_ids
    assert set(ids_of(load('test', 1))) != set(test_ids)


def test_the_study_split_follows_data_split_seed_whatever_the_run_seed(data_dir):
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from ddpm_jax import data  # pylint: disable=g-import-not-at-top
  config = ConfigDict(dict(dataset='tfds:food101', data_dir=data_dir, image_size=IMAGE_SIZE, split_seed=0,
                           random_flip=False, num_workers=0, strict=False))

  def trained_ids(seed):  # one epoch of the loader of a run with this config.seed
    loader = data.make_train_loader(config, global_batch_size=2 * FOOD101_CLASSES, seed=seed)
    return sorted(decode_id(np.rint((image + 1) * 127.5)) for image in next(iter(loader))['image'])

  with mocked_tfds(food101_examples()):
    test_ids = ids_of(data.make_source(config, 'test'))
    assert trained_ids(0) == trained_ids(5) == sorted(ids_of(data.make_source(config, 'train')))
    assert not set(trained_ids(5)) & set(test_ids)
    config.split_seed = 1
    assert set(ids_of(data.make_source(config, 'test'))) != set(test_ids)


@pytest.mark.parametrize('splits, test_from', [
    (('train', 'test', 'validation'), 'test'),
    (('train', 'validation'), 'validation'),
])
def test_other_datasets_read_tfds_splits(data_dir, splits, test_from):
  examples = {name: [(100 * n + i, i % 10) for i in range(5)] for n, name in enumerate(splits)}
  with mocked_tfds(examples):
    train = tfds_lib.tfds_source('cifar10', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
    test = tfds_lib.tfds_source('cifar10', 'test', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
  assert ids_of(train) == [i for i, _ in examples['train']]
  assert ids_of(test) == [i for i, _ in examples[test_from]]


def test_without_test_or_validation_2_percent_of_train_is_held_out(data_dir):
  examples = {'train': [(i, i % 10) for i in range(200)]}

  def load(split, seed):
    return ids_of(tfds_lib.tfds_source('cifar10', split, image_size=IMAGE_SIZE,
                                       data_dir=data_dir, seed=seed))

  with mocked_tfds(examples):
    train, test = load('train', 0), load('test', 0)
    assert len(test) == 4 and not set(train) & set(test)
    assert sorted(train + test) == list(range(200))
    assert load('test', 0) == test and load('test', 1) != test


def test_grayscale_dataset_becomes_rgb(data_dir):
  with mocked_tfds({'train': [(7, 0), (9, 1)], 'test': [(3, 0)]}):
    source = tfds_lib.tfds_source('mnist', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
  image = source[0]
  assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_cache_is_built_once(data_dir):
  examples = {'train': [(i, i % 10) for i in range(6)], 'test': [(50, 0)]}
  with mocked_tfds(examples):
    first = tfds_lib.tfds_source('cifar10', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
    modified = os.stat(first.path).st_mtime_ns
    with mock.patch.object(tfds.core.DatasetBuilder, 'as_dataset',
                           side_effect=AssertionError('TFDS read again')):
      second = tfds_lib.tfds_source('cifar10', 'train', image_size=IMAGE_SIZE, data_dir=data_dir,
                                    seed=0)
  assert second.path == first.path and os.stat(second.path).st_mtime_ns == modified
  assert ids_of(second) == list(range(6))
  assert [p for p in os.listdir(os.path.dirname(first.path)) if 'partial' in p] == []


def test_dataset_not_downloaded_is_one_clear_line(data_dir):
  with pytest.raises(ValueError) as raised:
    tfds_lib.tfds_source('cifar10', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0,
                         download=False)
  message = str(raised.value)
  assert '\n' not in message
  assert 'tfds:cifar10 is not available' in message and data_dir in message
  assert 'data.data_dir' in message and 'tfds build cifar10' in message


def test_failed_download_reports_tfds_reason(data_dir):
  offline = ConnectionError('Failed to resolve www.cs.toronto.edu')
  with mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare', side_effect=offline), mock.patch.object(
      tfds_lib, 'unreachable', return_value=''):  # the host answered; the download itself failed
    with pytest.raises(ValueError, match='Failed to resolve www.cs.toronto.edu.*tfds build cifar10'):
      tfds_lib.tfds_source('cifar10', 'test', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)


@pytest.mark.parametrize('name, error', [
    ('no_such_dataset', 'no_such_dataset not found'),
    ('imdb_reviews', 'no image feature'),
])
def test_unusable_dataset_names_fail_clearly(data_dir, name, error):
  with pytest.raises(ValueError, match=error):
    tfds_lib.tfds_source(name, 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)


def test_per_class_holdout_needs_enough_images_per_class():
  with pytest.raises(ValueError, match='Class 1 has 3 images'):
    tfds_lib.per_class_holdout(np.array([0] * 5 + [1] * 3), 4, np.random.default_rng(0))


def test_offline_is_told_in_seconds_without_asking_tfds_to_download(data_dir):
  def offline(request, timeout):
    raise urllib.error.URLError(OSError(-2, 'Name or service not known'))
  with mock.patch.object(urllib.request, 'urlopen', side_effect=offline) as asked, mock.patch.object(
      tfds.core.DatasetBuilder, 'download_and_prepare') as download:  # TFDS would retry for 212 s
    started = time.monotonic()
    with pytest.raises(ValueError) as raised:
      tfds_lib.tfds_source('cifar10', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
  assert time.monotonic() - started < 10 and not download.called
  assert asked.call_args.kwargs['timeout'] <= 5 and asked.call_args.args[0].full_url == 'https://www.cs.toronto.edu/'
  message = str(raised.value)
  assert '\n' not in message and 'looks offline (www.cs.toronto.edu: ' in message and 'tfds build cifar10' in message


def test_any_http_answer_counts_as_online():
  answer = urllib.error.HTTPError('https://example.org/', 403, 'Forbidden', {}, None)
  with mock.patch.object(urllib.request, 'urlopen', side_effect=answer):
    assert tfds_lib.unreachable(['https://example.org/data.tar.gz']) == ''


def test_labels_and_class_names_come_from_the_class_label_feature_through_a_holdout(data_dir):
  examples = {'train': [(i, (3 * i) % 10) for i in range(200)]}  # no test split: 2% of train is held out
  with mocked_tfds(examples):
    sources = [tfds_lib.tfds_source('cifar10', split, image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
               for split in ('train', 'test')]
    names = tfds.builder('cifar10', data_dir=data_dir).info.features['label'].names  # mocked: '0'...'9'
  for source in sources:
    assert source.class_names == tuple(names) and len(names) == 10
    labels = source.read_labels(np.arange(len(source)))
    assert labels.dtype == np.int32
    assert labels.tolist() == [(3 * i) % 10 for i in ids_of(source)]


def test_a_dataset_without_a_class_label_feature_has_no_class_names(data_dir):
  with mocked_tfds({'train': [(i, 0) for i in range(5)], 'validation': [(9, 0)]}):
    source = tfds_lib.tfds_source('lsun/church_outdoor', 'train', image_size=IMAGE_SIZE, data_dir=data_dir, seed=0)
  assert len(source) == 5 and source.class_names == ()


def test_the_label_feature_is_label_or_else_the_only_class_label():
  def features(**class_labels):
    return tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(None, None, 3)), **{
        name: tfds.features.ClassLabel(names=names) for name, names in class_labels.items()}})
  both = features(coarse_label=['x', 'y'], label=['a', 'b', 'c'])
  assert tfds_lib.label_feature(both) == 'label' and tfds_lib.class_names(both, 'label') == ('a', 'b', 'c')
  assert tfds_lib.label_feature(features(label_shape=['square', 'ellipse'])) == 'label_shape'
  assert tfds_lib.label_feature(features(label_shape=['a'], label_scale=['b'])) is None
  assert tfds_lib.label_feature(features()) is None and tfds_lib.class_names(features(), None) == ()
