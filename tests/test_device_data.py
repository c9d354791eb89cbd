"""data.on_device: batches drawn inside the train step from the whole split in device memory."""
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.core import device_data, sharding
from runs import copy_run, digest, run


def index_images(count, size=4):
  """Returns uint8 images whose pixel (0, 0, 0) is the index mod 251 and whose row 0 rises left to right."""
  images = np.zeros((count, size, size, 3), np.uint8)
  images[:, :, :, 0] = (np.arange(count) % 251)[:, None, None]
  images[:, 0, :, 1] = np.arange(size) * 10
  return images


def draw(images, steps, batch_size, flip=True, seed=0):
  on_device = device_data.to_device(images, sharding.make_mesh())
  batch = jax.jit(device_data.device_batch, static_argnames=('batch_size', 'flip'))
  return [np.asarray(batch(on_device, step, jax.random.key(seed), batch_size=batch_size, flip=flip)['image'])
          for step in range(steps)]


def decode(batch):
  """Returns (indices, flipped) of a batch of index_images."""
  pixels = np.rint((batch + 1.0) * 127.5).astype(int)
  return pixels[:, 0, 0, 0], pixels[:, 0, 0, 1] > pixels[:, 0, -1, 1]


def test_each_epoch_is_a_new_permutation_and_the_remainder_is_dropped():
  batches = draw(index_images(50), steps=12, batch_size=8)  # 6 batches an epoch, 2 images left over
  epochs = [np.concatenate([decode(b)[0] for b in batches[e * 6:(e + 1) * 6]]) for e in (0, 1)]
  for epoch in epochs:
    assert len(set(epoch)) == 48 and set(epoch) <= set(range(50))
  assert not np.array_equal(epochs[0], epochs[1])


def test_images_are_scaled_and_flipped_about_half_the_time_reproducibly():
  images = index_images(64)
  batches = draw(images, steps=8, batch_size=16)
  flipped = np.concatenate([decode(b)[1] for b in batches])
  assert 0.35 < flipped.mean() < 0.65
  for batch in batches:
    indices, mirrored = decode(batch)
    want = images[indices].astype(np.float32) / 127.5 - 1
    want[mirrored] = want[mirrored][:, :, ::-1]
    np.testing.assert_allclose(batch, want, atol=1e-6)
  assert all(np.array_equal(a, b) for a, b in zip(batches, draw(images, steps=8, batch_size=16)))
  assert not any(decode(b)[1].any() for b in draw(images, steps=4, batch_size=16, flip=False))
  assert not np.array_equal(batches[0], draw(images, steps=1, batch_size=16, seed=1)[0])


def test_labels_follow_their_rows_and_leave_the_images_as_without_labels():
  images = index_images(40)
  labels = (np.arange(40) * 7) % 5
  mesh = sharding.make_mesh()
  on_device = device_data.to_device(images, mesh, labels=labels)
  assert set(on_device) == {'image', 'label'} and on_device['label'].dtype == jnp.int32
  draw_both = jax.jit(lambda step: [device_data.device_batch(data, step, jax.random.key(0), batch_size=8, flip=True)
                                    for data in (on_device, on_device['image'])])  # one compilation: ~1 s each
  flipped = []
  for step in range(8):  # two epochs, flips on
    labelled, unlabelled = jax.device_get(draw_both(step))
    indices, mirrored = decode(labelled['image'])
    flipped.extend(mirrored)
    assert labelled['label'].tolist() == labels[indices].tolist()
    assert set(unlabelled) == {'image'}
    np.testing.assert_array_equal(labelled['image'], unlabelled['image'])
  assert 0.25 < np.mean(flipped) < 0.75


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match='must be uint8'):
    device_data.to_device(np.zeros((4, 2, 2, 3), np.float32), sharding.make_mesh())
  with pytest.raises(ValueError, match=r'labels must be integers \[4\] \(one per image\), got int64 \(3,\)'):
    device_data.to_device(np.zeros((4, 2, 2, 3), np.uint8), sharding.make_mesh(), labels=np.arange(3))
  with pytest.raises(ValueError, match='fewer than one batch of 8'):
    device_data.device_batch(jnp.zeros((5, 2, 2, 3), jnp.uint8), 0, jax.random.key(0), batch_size=8, flip=True)


def test_trains_on_device_and_resumes_bit_exact(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  on_device = {'data.on_device': True, 'training.sample_every_steps': 1000}
  straight = str(tmp_path / 'straight')
  run(straight, {**on_device, 'training.num_steps': 4})  # checkpoints at 2 and 4
  resumed = copy_run(straight, tmp_path / 'resumed')
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  run(resumed, {**on_device, 'training.num_steps': 6})  # another length: the batches must not depend on it
  assert 'Training from step 2 to 6' in caplog.text
  assert digest(resumed, 4) == digest(straight, 4)
