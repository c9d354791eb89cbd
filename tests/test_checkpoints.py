"""Checkpoint integrity: damaged checkpoints are detected and set aside, failed saves are clear errors."""
import glob
import json
import os
import resource
import shutil
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ddpm_jax import errors
from ddpm_jax.core import loss_scale, train_step
from ddpm_jax.run import checkpoints

# Orbax leaves the coroutines of a failed read or write unawaited; Python reports each when it is collected.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def make_state(scale):
  return {'params': jnp.arange(50_000, dtype=jnp.float32) * scale, 'step': jnp.asarray(scale, jnp.int32)}


ABSTRACT = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state(1))


@pytest.fixture
def workdir(tmp_path):
  """Returns a workdir with checkpoints 1, 2 and 3 (state scaled by the step)."""
  manager = checkpoints.make_manager(str(tmp_path), keep=5)
  for step in (1, 2, 3):
    checkpoints.save(manager, step, make_state(step))
  checkpoints.check_saved(manager, 3, wait=True)
  return str(tmp_path)


def step_dir(workdir, step):
  return os.path.join(workdir, 'checkpoints', str(step))


def data_file(workdir, step):
  """Returns the largest array-data file of a checkpoint (where the params' bytes are)."""
  return max(glob.glob(os.path.join(step_dir(workdir, step), 'state', '**', 'd', '*'), recursive=True),
             key=os.path.getsize)


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def overwrite_bytes(path):
  """Zeroes 256 bytes in the middle of the file: its size and structure stay valid."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(256))


def drop_item(workdir, step):
  shutil.rmtree(os.path.join(step_dir(workdir, step), 'state'))


def restore_latest(workdir):
  manager = checkpoints.make_manager(workdir, keep=5)
  return checkpoints.restore(manager, ABSTRACT), manager


def test_intact_checkpoints_restore_exactly(workdir):
  state, manager = restore_latest(workdir)
  assert int(state['step']) == 3
  np.testing.assert_array_equal(state['params'], make_state(3)['params'])
  explicit = checkpoints.restore(manager, ABSTRACT, step=1)
  np.testing.assert_array_equal(explicit['params'], make_state(1)['params'])


@pytest.mark.parametrize('damage', [
    lambda w: truncate(data_file(w, 3)),
    lambda w: overwrite_bytes(data_file(w, 3)),  # only the digest sees this one
    lambda w: drop_item(w, 3),
    lambda w: truncate(os.path.join(step_dir(w, 3), 'state', '_METADATA')),
], ids=['truncated file', 'altered bytes', 'missing item', 'truncated metadata'])
def test_damaged_latest_falls_back_to_the_newest_intact_and_is_kept_aside(workdir, damage, capsys):
  damage(workdir)
  state, manager = restore_latest(workdir)
  assert int(state['step']) == 2
  np.testing.assert_array_equal(state['params'], make_state(2)['params'])
  assert sorted(manager.all_steps()) == [1, 2]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_corrupt', '3'))  # moved, not deleted
  assert 'Checkpoint 3 is damaged' in capsys.readouterr().out
  checkpoints.save(manager, 3, make_state(3))  # the step can be saved again
  checkpoints.check_saved(manager, 3, wait=True)
  assert int(restore_latest(workdir)[0]['step']) == 3


def test_two_damaged_checkpoints_fall_back_two_steps(workdir):
  truncate(data_file(workdir, 3))
  drop_item(workdir, 2)
  state, manager = restore_latest(workdir)
  assert int(state['step']) == 1 and sorted(manager.all_steps()) == [1]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints_corrupt'))) == ['2', '3']


def test_nothing_restorable_is_one_error_and_moves_nothing(workdir):
  wrong_shape = {'params': jax.ShapeDtypeStruct((7,), jnp.float32), 'step': jax.ShapeDtypeStruct((), jnp.int32)}
  manager = checkpoints.make_manager(workdir, keep=5)
  with pytest.raises(ValueError, match=r'no checkpoint in .* can be restored \(step 3: .*step 2: .*step 1: '):
    checkpoints.restore(manager, wrong_shape)
  assert sorted(manager.all_steps()) == [1, 2, 3]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))


def test_a_damaged_requested_step_is_an_error_not_a_fallback(workdir):
  overwrite_bytes(data_file(workdir, 2))
  manager = checkpoints.make_manager(workdir, keep=5)
  with pytest.raises(ValueError, match='step 2: its contents do not match the digest'):
    checkpoints.restore(manager, ABSTRACT, step=2)
  with pytest.raises(ValueError, match=r'no checkpoint at step 9 .* available: \[1, 2, 3\]'):
    checkpoints.restore(manager, ABSTRACT, step=9)
  assert sorted(manager.all_steps()) == [1, 2, 3]


def test_a_failed_save_is_a_storage_error_and_keeps_the_earlier_checkpoints(workdir):
  manager = checkpoints.make_manager(workdir, keep=5)
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))  # "disk full" for files past 50 kB (Python ignores SIGXFSZ)
  try:
    checkpoints.save(manager, 4, make_state(4))
    with pytest.raises(errors.StorageError) as error:
      checkpoints.check_saved(manager, 4, wait=True)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'could not save checkpoint 4 in {workdir}/checkpoints: File too large.')
  assert 'Earlier checkpoints are intact: [1, 2, 3]' in message and 'resume from step 3' in message
  state, manager = restore_latest(workdir)
  assert int(state['step']) == 3
  assert sorted(checkpoints.make_manager(workdir, keep=5).all_steps()) == [1, 2, 3]
  assert not [d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in d]  # cleaned at the next start


def test_the_digest_covers_every_leaf_and_its_path():
  state = make_state(2)
  assert checkpoints.state_digest(state) == checkpoints.state_digest(jax.device_get(state))
  assert checkpoints.state_digest(state) != checkpoints.state_digest({**state, 'step': jnp.asarray(3, jnp.int32)})
  renamed = {'other': state['params'], 'step': state['step']}
  assert checkpoints.state_digest(state) != checkpoints.state_digest(renamed)


@flax.struct.dataclass
class StateOfEarlierVersions:
  """The train state's fields before the loss scale existed."""
  step: Any
  params: Any
  ema_params: Any
  opt_state: Any
  rng: Any
  nonfinite_streak: Any


def tiny_train_state(scale=None):
  optimizer = train_step.make_optimizer(1e-3, 0, 1.0)
  return train_step.create_train_state({'w': jnp.arange(4.0)}, optimizer, jax.random.PRNGKey(0), scale)


def test_the_loss_scale_survives_a_checkpoint_and_states_without_one_restore_as_before(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path), keep=5)
  float16 = tiny_train_state(loss_scale.LossScale(jnp.asarray(1024.0), jnp.asarray(17, jnp.int32)))
  float32 = tiny_train_state()
  earlier = StateOfEarlierVersions(**{name: getattr(float32, name) for name in
                                      StateOfEarlierVersions.__dataclass_fields__})
  assert checkpoints.state_digest(earlier) == checkpoints.state_digest(float32)
  for step, state in ((1, float16), (2, float32), (3, earlier)):
    checkpoints.save(manager, step, state)
  checkpoints.check_saved(manager, 3, wait=True)
  # A train state saved by Orbax as it is (not through checkpoints.save) also writes its None loss scale.
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(float32)))
  manager.wait_until_finished()
  restored = checkpoints.restore(manager, jax.eval_shape(lambda: float16), step=1)
  assert float(restored.loss_scale.scale) == 1024.0 and int(restored.loss_scale.good_steps) == 17
  for step in (2, 3, 4):  # a float32 run's checkpoint, one written before the field existed, one saved as it is
    restored = checkpoints.restore(manager, jax.eval_shape(lambda: float32), step=step)
    assert isinstance(restored, train_step.TrainState) and restored.loss_scale is None
    assert checkpoints.state_digest(restored) == checkpoints.state_digest(float32)
  # The float32 checkpoint is the earlier versions' one, file for file.
  with open(os.path.join(step_dir(str(tmp_path), 2), 'state', '_METADATA')) as new, \
       open(os.path.join(step_dir(str(tmp_path), 3), 'state', '_METADATA')) as old:
    assert json.load(new)['tree_metadata'] == json.load(old)['tree_metadata']
