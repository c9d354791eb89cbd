"""Resuming continues with exactly the batches the uninterrupted run draws: from checkpoints of older versions,
which also stored the data iterator's position.

(1 device -> 4 is in tests/test_sharding.py, in its 4-device interpreter; 2 processes -> 1 in
tests/test_distributed.py, beside the run it resumes.)
"""
import logging
import os
import shutil

import grain
import orbax.checkpoint as ocp

from ddpm_jax import data
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from runs import checkpoint_steps, copy_run, digest, run, tiny_config

def save_as_an_older_version(workdir: str, step: int) -> None:
  """Rewrites checkpoint `step` as versions before the step-only batches wrote it: with the grain iterator's
  position (after `step` batches) as a third item, 'data_iterator'."""
  config = tiny_config()
  components = components_lib.build(config)
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  state = checkpoints.restore(manager, components_lib.abstract_state(config, components), step=step)
  iterator = data.make_train_loader(config.data, global_batch_size=config.training.batch_size, seed=config.seed)
  for _ in range(step):
    next(iterator)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
  old = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'data_iterator', 'digest'))
  old.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data_iterator=grain.checkpoint.CheckpointSave(iterator),
      digest=ocp.args.JsonSave({'sha256': checkpoints.state_digest(state)})))
  old.wait_until_finished()
  iterator.close()


def test_a_checkpoint_of_an_older_version_with_an_iterator_position_restores_and_resumes_exactly(
    trained, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  workdir = copy_run(trained, tmp_path / 'older')
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  save_as_an_older_version(workdir, 2)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2', 'data_iterator'))
  run(workdir)
  assert 'Restored checkpoint 2' in caplog.text and 'Training from step 2 to 4' in caplog.text
  assert checkpoint_steps(workdir) == [2, 4]
  assert digest(workdir, 4) == digest(trained, 4)
