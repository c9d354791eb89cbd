"""Tests for the built-in procedural `shapes` dataset."""
import numpy as np
import pytest

from ddpm_jax.data import shapes


def _images(seed, split, indices, size=16):
  return shapes.render_shapes(seed, split, indices, size)


def test_same_seed_and_index_give_the_same_image():
  first = shapes.ShapesSource(16, 'train', seed=3)[123]
  again = shapes.ShapesSource(16, 'train', seed=3)[123]
  np.testing.assert_array_equal(first, again)


def test_a_batch_render_equals_the_items_rendered_one_by_one():
  source = shapes.ShapesSource(16, 'train', seed=1)
  batch = _images(1, 'train', np.arange(10, 20))
  np.testing.assert_array_equal(batch, np.stack([source[i] for i in range(10, 20)]))


def test_different_indices_and_seeds_give_different_images():
  by_index = _images(0, 'train', np.arange(32)).reshape(32, -1)
  by_seed = np.stack([_images(seed, 'train', [7])[0] for seed in range(32)]).reshape(32, -1)
  for images in (by_index, by_seed):
    assert len(np.unique(images, axis=0)) == len(images)


@pytest.mark.parametrize('size', [8, 16, 32, 64])
def test_dtype_shape_and_range_at_any_size(size):
  images = _images(0, 'test', np.arange(16), size)
  assert images.dtype == np.uint8
  assert images.shape == (16, size, size, 3)
  assert images.min() < 40 and images.max() > 220
  # Every image shows a shape on a background, not a flat field.
  assert (images.reshape(16, -1, 3).std(axis=1).max(axis=1) > 20).all()


def test_the_shape_covers_a_moderate_part_of_the_image():
  images = _images(0, 'train', np.arange(64), 32).astype(int)
  # The background of each row: its left-most pixel, which the margin keeps clear.
  background = images[:, :, :1]
  covered = (np.abs(images - background).sum(-1) > 60).mean(axis=(1, 2))
  assert covered.min() > 0.04 and covered.max() < 0.45
  assert np.median(covered) > 0.1


def test_edges_are_antialiased_like_a_supersampled_render():
  # The same scene at 4x resolution, box-downsampled: the exact pixel coverage.
  sharp = _images(5, 'train', np.arange(16), 128).astype(np.float64)
  reference = sharp.reshape(16, 32, 4, 32, 4, 3).mean(axis=(2, 4))
  images = _images(5, 'train', np.arange(16), 32).astype(np.float64)
  assert np.abs(images - reference).mean() < 1.0
  assert np.percentile(np.abs(images - reference), 99) < 10  # worst at sharp corners


def test_train_and_test_are_disjoint_streams():
  train = {image.tobytes() for image in _images(0, 'train', np.arange(500), 8)}
  test = {image.tobytes() for image in _images(0, 'test', np.arange(500), 8)}
  assert len(train) == 500 and len(test) == 500
  assert not train & test


def test_source_length_bounds_and_split_names():
  assert len(shapes.ShapesSource(8, 'train')) == shapes.SPLIT_SIZES['train']
  assert len(shapes.ShapesSource(8, 'test')) == shapes.SPLIT_SIZES['test']
  with pytest.raises(IndexError):
    shapes.ShapesSource(8, 'test')[shapes.SPLIT_SIZES['test']]
  with pytest.raises(ValueError, match='validation'):
    shapes.ShapesSource(8, 'validation')


def test_labels_name_the_shape_drawn():
  # A shape fills its bounding box by its geometry: square 1, circle pi/4, triangle 1/2.
  source = shapes.ShapesSource(32, 'train', seed=2)
  indices = np.arange(48)
  images = np.stack([source[i] for i in indices]).astype(int)
  covered = np.abs(images - images[:, :, :1]).sum(-1) > 60  # unlike its row's left-most (background) pixel
  rows, columns = covered.any(axis=2), covered.any(axis=1)
  fill = covered.sum(axis=(1, 2)) / (rows.sum(axis=1) * columns.sum(axis=1))
  seen = np.where(fill > 0.9, 'square', np.where(fill > 0.65, 'circle', 'triangle'))
  assert source.class_names == ('circle', 'square', 'triangle')
  labels = source.read_labels(indices)
  assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1, 2}
  assert [source.class_names[label] for label in labels] == seen.tolist()
