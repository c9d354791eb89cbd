"""Where the train step's inputs come from: the host loader (grain), or the whole split in device memory."""
import jax

from ddpm_jax import data
from ddpm_jax.config import schema
from ddpm_jax.core import device_data, sharding


class TrainInput:
  """The train step's input each step from `start_step` on: batch i is a function of (seed, i) alone.

  So a run resumed at step s, on any number of processes or devices, reads the very
  batches the uninterrupted run reads from s on, and checkpoints keep no data position.
  A class-conditional run (model.num_classes > 0) reads each image's label with it.
  """

  def __init__(self, config: schema.Config, mesh, start_step: int = 0):
    self.mesh, self.iterator, self.images = mesh, None, None
    with_labels = config.model.num_classes > 0
    if config.data.on_device:
      # Indices, flips and scaling happen inside the jitted step, from the state's step.
      if with_labels:
        images, labels = data.load_split(config.data, 'train', with_labels=True)
        self.images = device_data.to_device(images, mesh, labels=labels)
      else:
        self.images = device_data.to_device(data.load_split(config.data, 'train'), mesh)
    else:
      self.iterator = data.make_train_loader(config.data, global_batch_size=config.training.batch_size,
                                             seed=config.seed, process_index=jax.process_index(),
                                             process_count=jax.process_count(), start_step=start_step,
                                             with_labels=with_labels)

  def next(self):
    """Returns the next step's input: the global batch, or the images (and labels) on device."""
    if self.images is not None:
      return self.images
    return sharding.global_batch(next(self.iterator), self.mesh)

  def close(self) -> None:
    if self.iterator is not None:
      self.iterator.close()
