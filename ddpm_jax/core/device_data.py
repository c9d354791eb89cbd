"""Training data that lives on the device: the whole split as one uint8 array, batches drawn inside the step.

A dataset that fits in device memory (CIFAR-10 is 154 MB, Food-101 at 64x64 1.2 GB
as uint8) need not cross the host-device link every step: `device_batch` picks a
step's rows, flips and scales them inside the jitted train step, so the host only
dispatches. Pure: imports only jax and numpy.

Order and flips derive from (rng, epoch) and (rng, step) alone (`keys`), as everything else
in a run, so a resumed run draws exactly the batches the uninterrupted one would have
and the checkpoint needs no iterator position. Each epoch is a fresh permutation of
the whole split; its remainder (fewer than a batch) is dropped, as the host loader does.
A labelled split is {'image', 'label'} on device: each batch's labels are its rows' labels,
drawn with no key of their own (flipping an image keeps its class).
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ddpm_jax.core import keys, sharding


def to_device(images: np.ndarray, mesh: Mesh, labels: np.ndarray | None = None) -> jax.Array | dict:
  """Returns the uint8 images [N, H, W, 3] replicated on every device of the mesh, as one array.

  With labels (int [N]): {'image': uint8 [N, H, W, 3], 'label': int32 [N]}, both replicated.
  """
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'on-device data must be uint8 [N, H, W, C], got {images.dtype} {images.shape}')
  if labels is None:
    return sharding.replicate(jnp.asarray(images), mesh)
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1]:
    raise ValueError(f'on-device labels must be integers [{images.shape[0]}] (one per image), '
                     f'got {labels.dtype} {labels.shape}')
  return sharding.replicate({'image': jnp.asarray(images), 'label': jnp.asarray(labels, jnp.int32)}, mesh)


def device_batch(data: jax.Array | dict, step, rng, *, batch_size: int, flip: bool) -> dict:
  """Returns {'image': float32 [batch_size, H, W, C] in [-1, 1]}: step `step`'s batch of the images on device.

  `data` is what `to_device` returns; labelled data adds 'label': int32 [batch_size], the batch's classes.
  """
  images = data['image'] if isinstance(data, dict) else data
  num_images = images.shape[0]
  batches_per_epoch = num_images // batch_size
  if batches_per_epoch == 0:
    raise ValueError(f'the dataset has {num_images} training examples, fewer than one batch of {batch_size}')
  epoch, index = step // batches_per_epoch, step % batches_per_epoch
  order = jax.random.permutation(keys.device_order_key(rng, epoch), num_images)
  rows = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
  batch = images[rows]
  if flip:
    mirrored = jax.random.bernoulli(keys.device_flip_key(rng, step), 0.5, (batch_size,))
    batch = jnp.where(mirrored[:, None, None, None], batch[:, :, ::-1], batch)
  out = {'image': batch.astype(jnp.float32) / 127.5 - 1.0}
  if isinstance(data, dict):
    out['label'] = data['label'][rows]
  return out
