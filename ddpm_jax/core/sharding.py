"""Data parallelism: one mesh axis 'data' over every device of every process.

Pure: imports only jax and numpy. The state is replicated and the batch is split
along its first axis; jit follows the shardings of its inputs, so the train step
itself needs no change to run on one device or many.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  """Returns a 1-D mesh named 'data' over all devices."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Returns the rows of every global batch that process `process_index` reads: its run of equal, disjoint runs.

  The one place a global batch size becomes a per-process one. Raises a one-line
  ValueError when the batch does not split evenly over the processes.
  """
  if global_batch_size % process_count:
    raise ValueError(
        f'training.batch_size={global_batch_size} is not divisible by the '
        f'{process_count} processes; use a multiple of {process_count}.')
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def check_batch_size(global_batch_size: int, device_count: int, process_count: int) -> None:
  """Returns None if the global batch splits evenly over the processes and the devices; else a one-line ValueError."""
  process_rows(global_batch_size, 0, process_count)
  if global_batch_size % device_count:
    raise ValueError(f'training.batch_size={global_batch_size} must be divisible by the {device_count} devices')


def replicated(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that splits the leading (batch) axis across the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Returns tree with every array placed, replicated, on all devices of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def abstract_replicated(abstract_tree, mesh: Mesh):
  """Returns ShapeDtypeStructs of abstract_tree that carry the replicated sharding (what to restore into)."""
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


def global_batch(local_batch, mesh: Mesh):
  """Returns the global, batch-sharded arrays assembled from this process's part of the batch."""
  sharding = batch_sharded(mesh)
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
