"""Class labels through ddpm_jax.data: the train loader, load_split, class_names and check_dataset's errors.

Each class's images have a colour of their own (test_data_folder.class_folder), so every batch shows
whether its labels still belong to its images.
"""
import numpy as np
import pytest

import ddpm_jax.data as data
from ddpm_jax.config import convert, schema
from ddpm_jax.data import cache
from test_data_folder import class_folder, class_of_colour
from test_data_tfds import mocked_tfds


def data_config(dataset, tmp_path, **overrides):
  return convert.from_mapping({'dataset': dataset, 'image_size': 8, 'data_dir': str(tmp_path / 'cache'),
                               **overrides}, schema.DataConfig, 'data.')


@pytest.fixture(name='pets')
def fixture_pets(tmp_path, monkeypatch):
  """Returns the data section of a folder of 3 classes, 2 images each, read with random flips."""
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  return data_config(f'folder:{class_folder(tmp_path / "pets")}', tmp_path, random_flip=True)


def colour_classes(images) -> list[int]:
  return [class_of_colour(np.rint((image + 1) * 127.5) if image.dtype != np.uint8 else image) for image in images]


def test_folder_labels_ride_through_the_cache_the_loader_flips_and_a_resume(pets):
  assert data.class_names(pets) == ('bird', 'cat', 'dog')
  loader = data.make_train_loader(pets, global_batch_size=2, seed=1, with_labels=True)
  batches = [next(loader) for _ in range(9)]  # 3 epochs
  for batch in batches:
    assert batch['label'].dtype == np.int32 and batch['label'].tolist() == colour_classes(batch['image'])
  assert sorted(np.concatenate([b['label'] for b in batches[:3]]).tolist()) == [0, 0, 1, 1, 2, 2]
  resumed = data.make_train_loader(pets, global_batch_size=2, seed=1, start_step=4, with_labels=True)
  for want in batches[4:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['label'], want['label'])
    np.testing.assert_array_equal(got['image'], want['image'])
  plain = next(data.make_train_loader(pets, global_batch_size=2, seed=1))
  assert set(plain) == {'image'} and np.array_equal(plain['image'], batches[0]['image'])


def test_load_split_returns_each_images_label_with_it(pets):
  images, labels = data.load_split(pets, 'train', with_labels=True)
  assert images.dtype == np.uint8 and labels.dtype == np.int32 and labels.shape == (6,)
  assert labels.tolist() == colour_classes(images)
  np.testing.assert_array_equal(data.load_split(pets, 'train'), images)


def test_shapes_labels_come_through_the_loader():
  config = convert.from_mapping({'dataset': 'shapes', 'image_size': 8}, schema.DataConfig, 'data.')
  assert data.class_names(config) == ('circle', 'square', 'triangle')
  batch = next(data.make_train_loader(config, global_batch_size=16, seed=0, with_labels=True))
  assert batch['image'].shape == (16, 8, 8, 3) and set(batch['label'].tolist()) <= {0, 1, 2}
  data.check_dataset(config, ('train', 'test'), num_classes=3)


@pytest.mark.parametrize('num_classes', [2, 4])
def test_a_num_classes_that_is_not_the_datasets_names_both(pets, num_classes):
  with pytest.raises(ValueError) as raised:
    data.check_dataset(pets, ('train', 'test'), num_classes=num_classes)
  message = str(raised.value)
  assert f'model.num_classes={num_classes} differs from the 3 classes' in message
  assert 'set model.num_classes=3' in message and '\n' not in message
  data.check_dataset(pets, ('train', 'test'), num_classes=3)
  data.check_dataset(pets, ('train', 'test'))


def test_images_outside_class_subfolders_are_refused_before_anything_is_cached(tmp_path, monkeypatch):
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  config = data_config(f'folder:{class_folder(tmp_path / "pets", in_root=("loose.png",))}', tmp_path)
  with pytest.raises(ValueError, match=r"1 images directly in it \(e.g. \['loose.png'\]\)") as raised:
    data.check_dataset(config, num_classes=3)
  assert '\n' not in str(raised.value) and not (tmp_path / 'cache').exists()
  with pytest.raises(ValueError, match='directly in it'):
    data.make_train_loader(config, global_batch_size=2, seed=0, with_labels=True)
  data.check_dataset(config)  # unconditional: read as ever
  assert len(data.load_split(config, 'train')) == 7


def test_conditioning_on_a_dataset_without_labels_is_one_line(tmp_path, monkeypatch):
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  config = data_config('tfds:lsun/church_outdoor', tmp_path)
  with mocked_tfds({'train': [(i, 0) for i in range(4)], 'validation': [(9, 0)]}):
    data.check_dataset(config, ('train', 'test'))
    assert data.class_names(config) == ()
    with pytest.raises(ValueError) as raised:
      data.check_dataset(config, ('train', 'test'), num_classes=10)
    with pytest.raises(ValueError, match='has no class labels'):
      data.load_split(config, 'train', with_labels=True)
  message = str(raised.value)
  assert "data.dataset='tfds:lsun/church_outdoor' has no class labels" in message and '\n' not in message
  assert 'model.num_classes=10' in message and 'model.num_classes=0' in message


def test_examples_without_a_label_are_refused_when_conditioning(tmp_path, monkeypatch):
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  config = data_config('tfds:cifar10', tmp_path)
  with mocked_tfds({'train': [(i, -1 if i in (2, 5) else i % 10) for i in range(12)], 'test': [(50, 1)]}):
    with pytest.raises(ValueError, match=r'has 2 of 12 training images without a label') as raised:
      data.check_dataset(config, ('train', 'test'), num_classes=10)
    data.check_dataset(config, ('train', 'test'))
  assert '\n' not in str(raised.value)
