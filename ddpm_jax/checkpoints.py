"""Orbax checkpoints of the train state together with the data iterator's position."""
import os

import grain
import orbax.checkpoint as ocp
from absl import logging

STATE, DATA_ITERATOR = 'state', 'data_iterator'


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Returns the CheckpointManager of workdir/checkpoints, keeping the newest `keep` checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=(STATE, DATA_ITERATOR))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
  """Saves the state (and the iterator's position, when given) as checkpoint `step`."""
  items = {STATE: ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items[DATA_ITERATOR] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iterator=None, step: int | None = None):
  """Returns the state of checkpoint `step` (default: the latest); positions data_iterator in place."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}')
  if step not in manager.all_steps():
    raise ValueError(f'no checkpoint at step {step} in {manager.directory}; '
                     f'available: {sorted(manager.all_steps())}')
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items[DATA_ITERATOR] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  logging.info('Restored checkpoint %d from %s', step, manager.directory)
  return restored[STATE]

