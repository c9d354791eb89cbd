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
