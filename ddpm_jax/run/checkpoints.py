"""Orbax checkpoints of the train state, and their integrity.

A checkpoint holds two items: the state and a digest (SHA-256 over the state's leaves).
No data position: a run's batches are a function of the step alone. Checkpoints of
older versions also hold a grain iterator position ('data_iterator'); it is not read.

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a save killed midway leaves no checkpoint under its step; the digest catches what
that cannot: a file truncated, emptied or altered after the save. Restoring without a
step takes the newest intact checkpoint and moves the damaged newer ones aside to
checkpoints_corrupt/, never deleting them.
"""
import dataclasses
import hashlib
import logging as logging_lib
import os
import re
import shutil
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ddpm_jax import errors, paths

STATE, DIGEST = 'state', 'digest'


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Returns the CheckpointManager of workdir/checkpoints, keeping the newest `keep` checkpoints."""
  silence_abandoned_io()  # before any I/O: a failed save's threads print while the loop still trains
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(paths.Workdir(workdir).checkpoints, options=options,
                               item_names=(STATE, DIGEST))


def arrays_digest(named_arrays) -> str:
  """Returns the SHA-256 of (name, array) pairs, in their order: each name, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for name, leaf in named_arrays:
    array = np.ascontiguousarray(leaf)
    digest.update(f'{name}:{array.dtype}:{array.shape};'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def state_digest(state) -> str:
  """Returns the SHA-256 of the state's leaves: their paths, dtypes, shapes and bytes."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return arrays_digest((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)


def error_reason(error: BaseException) -> str:
  """Returns a short, one-line reason for an error of Orbax, TensorStore or the file system."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = ' '.join(str(error).split())
  if 'See full TensorStore details' in text:  # the rest is a TensorStore spec, dozens of lines; the cause says why
    text = ' '.join(str(error.__cause__ or text.split(' See full TensorStore details')[0]).split())
    text = re.sub(r' in OCDBT database at local file "[^"]*"', '', text)  # the checkpoint is named beside it
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return os.strerror(int(code.group(1)))
  return (text[:300] + '...' if len(text) > 300 else text) or type(error).__name__


def storage_error(manager: ocp.CheckpointManager, step: int, error: BaseException) -> errors.StorageError:
  """Returns the one-line error of a failed save, naming the checkpoints that remain.

  An async save's error surfaces at a later call, so the step is read from the failed
  write's path where it names one (<step>.orbax-checkpoint-tmp), else `step` is used.
  """
  failed = re.search(r'/(\d+)\.orbax-checkpoint-tmp', str(error))
  step = int(failed.group(1)) if failed else step
  # From the disk: after a failed save the manager's own list may already omit the checkpoints it
  # planned to delete once the new one was committed.
  kept = steps_on_disk(manager)
  resume = f'resume from step {kept[-1]}' if kept else 'start again'
  return errors.StorageError(
      f'could not save checkpoint {step} in {manager.directory}: {error_reason(error)}. Earlier checkpoints are '
      f'intact: {kept}. Free disk space or fix the permissions, then run the same command to {resume}.')


def steps_on_disk(manager: ocp.CheckpointManager) -> list:
  """Returns the steps of the complete checkpoints in the manager's directory, ascending."""
  directory = str(manager.directory)
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def stored(state):
  """Returns what a checkpoint holds of a state: a train state's fields less those that are None.

  A field added to the train state with None for the runs that don't use it (the loss scale of
  runs that don't compute in float16) is then absent from their checkpoints, as from those of
  the versions before it: both restore. Any other tree is stored as it is.
  """
  if not dataclasses.is_dataclass(state):
    return state
  return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)
          if getattr(state, field.name) is not None}


def restore_target(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Returns what to restore checkpoint `step` into: `stored(abstract_state)`, with the None fields it holds.

  A train state saved as it is (not through `save`) writes its None fields too.
  """
  target = stored(abstract_state)
  if not dataclasses.is_dataclass(abstract_state):
    return target
  path = os.path.join(str(manager.directory), str(step), STATE)
  on_disk = set(ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree)
  return {**target, **{name: None for name in on_disk - set(target) if getattr(abstract_state, name, 0) is None}}


def from_stored(abstract_state, restored):
  """Returns the state of abstract_state's type from what `stored` made of it."""
  return abstract_state.replace(**restored) if dataclasses.is_dataclass(abstract_state) else restored


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts saving the state and its digest as checkpoint `step`; the write is async."""
  items = {STATE: ocp.args.StandardSave(stored(state)), DIGEST: ocp.args.JsonSave({'sha256': state_digest(state)})}
  try:
    manager.save(step, args=ocp.args.Composite(**items), force=True)
  except Exception as e:  # pylint: disable=broad-except  # the file system fails in many ways
    raise storage_error(manager, step, e) from None


def check_saved(manager: ocp.CheckpointManager, step: int, wait: bool = False) -> None:
  """Raises StorageError if the async save of checkpoint `step` failed; with wait, first waits for it to end."""
  try:
    if wait:
      manager.wait_until_finished()
    manager.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(manager, step, e) from None


def restore_verified(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Returns checkpoint `step`'s state once its digest matches."""
  target = restore_target(manager, step, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))[STATE]
  state = from_stored(abstract_state, restored)
  try:
    expected = manager.restore(step, args=ocp.args.Composite(**{DIGEST: ocp.args.JsonRestore()}))[DIGEST]['sha256']
  except (KeyError, FileNotFoundError):
    logging.warning('Checkpoint %d has no digest (written by an older version): not verified.', step)
    return state
  if state_digest(state) != expected:
    raise ValueError('its contents do not match the digest written with it (a file was altered after the save)')
  return state


def quarantine(manager: ocp.CheckpointManager, step: int) -> str:
  """Returns where checkpoint `step` was moved: checkpoints_corrupt/<step> beside checkpoints/."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = paths.Workdir(os.path.dirname(str(manager.directory))).corrupt_checkpoints
  target, suffix = os.path.join(target_dir, str(step)), 1
  while os.path.exists(target):
    target, suffix = os.path.join(target_dir, f'{step}.{suffix}'), suffix + 1
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    shutil.move(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
  manager.reload()
  return target


def _is_closed_loop_error(error) -> bool:
  """Returns whether `error` is asyncio's "Event loop is closed"."""
  return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'


class _ClosedLoopFilter(logging_lib.Filter):
  """Drops asyncio's "Task was destroyed but it is pending!" of the I/O Orbax abandons."""

  def filter(self, record):
    return not (record.name == 'asyncio' and record.getMessage().startswith('Task was destroyed but it is pending'))


def silence_abandoned_io() -> None:
  """Keeps the reads and writes Orbax abandons when a checkpoint fails from printing a traceback each.

  Orbax runs a checkpoint's reads or writes (one coroutine per array) on an event loop of its own and
  closes the loop when the first fails, the others still pending (asyncio_utils: no cancellation before
  loop.close()). Each one left then raises "Event loop is closed": a coroutine when it is collected
  (sys.unraisablehook, "Exception ignored in ..."), a TensorStore callback on its I/O thread
  (PyErr_Print, so sys.excepthook), a task in asyncio's log. Thousands of tracebacks for a U-Net, seen with
  a damaged checkpoint and a full disk; `restore` and `check_saved` report the failure in one line.
  """
  if getattr(sys.unraisablehook, 'silences_closed_loops', False):
    return
  unraisablehook, excepthook = sys.unraisablehook, sys.excepthook

  def on_unraisable(unraisable):
    if not _is_closed_loop_error(unraisable.exc_value):
      unraisablehook(unraisable)

  def on_exception(exc_type, value, traceback):
    if not (_is_closed_loop_error(value) and threading.current_thread() is not threading.main_thread()):
      excepthook(exc_type, value, traceback)  # the main thread's errors always show

  on_unraisable.silences_closed_loops = True
  sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
  logging_lib.getLogger('asyncio').addFilter(_ClosedLoopFilter())


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Returns the state of checkpoint `step`, or of the newest intact one.

  Without a step, damaged checkpoints newer than the one restored are moved to
  checkpoints_corrupt/. If none can be restored, nothing is moved and the error lists why.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}')
  if step is not None and step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {manager.directory}; available: {sorted(steps)}')
  failures = {}
  for candidate in [step] if step is not None else steps:
    try:
      state = restore_verified(manager, candidate, abstract_state)
    except Exception as e:  # pylint: disable=broad-except  # Orbax and TensorStore fail in many ways
      failures[candidate] = error_reason(e)
      logging.info('Checkpoint %d in %s cannot be restored: %s', candidate, manager.directory, failures[candidate])
      continue
    for bad in failures:  # one line each: the list of failures, above, shows only with --verbosity
      moved = quarantine(manager, bad)
      print(f'Checkpoint {bad} is damaged ({failures[bad]}): moved it to {moved}; using checkpoint {candidate} '
            'instead.')
    logging.info('Restored checkpoint %d from %s', candidate, manager.directory)
    return state
  reasons = '; '.join(f'step {s}: {reason}' for s, reason in failures.items())
  raise ValueError(f'no checkpoint in {manager.directory} can be restored ({reasons}). If the config changed '
                   f'since training, use the one saved in the workdir (config.json)')
