"""Resuming continues with exactly the batches the uninterrupted run draws: on another number of devices, and
from checkpoints of older versions, which also stored the data iterator's position.

(2 processes -> 1 is in tests/test_distributed.py, beside the run it resumes.)
"""
import logging
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clitools import cli
from ddpm_jax import data
from ddpm_jax.reporting.runs import scalars
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from runs import checkpoint_steps, copy_run, digest, restore_numpy, run, tiny_config

FOUR_DEVICES = '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'


def test_a_one_device_run_resumed_on_four_devices_continues_with_the_same_batches(env, trained, tmp_path, adam_atol):
  resumed = copy_run(trained, tmp_path / 'four_devices')
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  xla_flags = f"{env.get('XLA_FLAGS', '')} {FOUR_DEVICES}".strip()  # after the user's (README: other CPUs): ours win
  result = cli(dict(env, XLA_FLAGS=xla_flags), f'--workdir={resumed}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Training from step 2 to 4 on 4 devices (1 process;' in result.stdout, result.stdout
  # The batch's gradient is summed over 4 devices instead of 1: equal to float32 rounding amplified by Adam (the tiny
  # config's 1e-3, sums of 8 images x 64 pixels: ~3e-5), while other batches move the params by ~1e-3 and the loss
  # by ~1e-2.
  four, one = restore_numpy(resumed, 4), restore_numpy(trained, 4)
  assert int(four['step']) == 4
  atol = adam_atol(1e-3, 8 * 64)
  for name in ('params', 'ema_params'):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), four[name], one[name])
  assert scalars(resumed)['loss'][4] == pytest.approx(scalars(trained)['loss'][4], rel=1e-4)


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
