"""End to end through the CLI: train, log, checkpoint, grid, resume, sample; and bad input."""
import glob
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from clitools import checkpoint_steps, cli, start
from ddpm_jax.events import scalars


@pytest.fixture(scope='module')
def trained(env, tmp_path_factory):
  """Returns a workdir trained 4 steps by the CLI, and the process."""
  workdir = str(tmp_path_factory.mktemp('run') / 'tiny')
  result = cli(env, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_train_writes_config_events_checkpoints_and_grids(trained):
  workdir, _ = trained
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['training']['num_steps'] == 4
  logged = scalars(workdir)
  assert set(logged['loss']) == {2, 4} and all(0 < v < 3 for v in logged['loss'].values())
  assert set(logged['grad_norm']) == {2, 4} and set(logged['learning_rate']) == {2, 4}
  assert logged['learning_rate'][2] == pytest.approx(1e-3)  # warm-up of 2 steps reached the peak
  assert 'steps_per_sec' in logged
  assert checkpoint_steps(workdir) == [2, 4]
  for step in (2, 4):
    grid = np.asarray(Image.open(os.path.join(workdir, 'samples', f'step_{step}.png')))
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 10, 2 + 2 * 10, 3)  # 4 images of 8 px in a 2x2 grid


def test_second_run_resumes_and_trains_only_the_remaining_steps(env, trained, tmp_path):
  workdir, _ = trained
  resumed = str(tmp_path / 'resumed')
  subprocess.run(['cp', '-r', workdir, resumed], check=True)
  result = cli(env, f'--workdir={resumed}', '--config.training.num_steps=6')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Restored checkpoint 4' in result.stderr and 'Training from step 4 to 6' in result.stderr
  assert checkpoint_steps(resumed) == [4, 6]  # keep_checkpoints=2
  assert set(scalars(resumed)['loss']) == {2, 4, 6}
  again = cli(env, f'--workdir={resumed}', '--config.training.num_steps=6')
  assert again.returncode == 0 and 'Run already finished at step 6' in again.stdout
  assert checkpoint_steps(resumed) == [4, 6]


def test_sample_mode_writes_grid_and_npz(env, trained):
  workdir, _ = trained
  result = cli(env, f'--workdir={workdir}', '--mode=sample')
  assert result.returncode == 0, result.stderr[-3000:]
  npz = glob.glob(os.path.join(workdir, 'samples', 'sample_step_4_*.npz'))
  assert len(npz) == 1
  images = np.load(npz[0])['images']
  assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
  assert os.path.exists(npz[0][:-4] + '.png')
  missing = cli(env, f'--workdir={workdir}', '--mode=sample', '--checkpoint_step=3')
  assert missing.returncode == 2 and 'no checkpoint at step 3' in missing.stderr and 'available: [2, 4]' in missing.stderr


@pytest.mark.parametrize('override,message', [
    ('--config.diffusion.schedule=quadratic', "unknown schedule 'quadratic'; valid schedules: linear, cosine"),
    ('--config.diffusion.loss=l3', "unknown diffusion.loss 'l3'; valid: mse, mae, huber"),
    ('--config.diffusion.prediction=score', "unknown diffusion.prediction 'score'; valid: eps, x0, v"),
    ('--config.sampling.sampler=euler', "unknown sampling.sampler 'euler'; valid: ddpm, ddim"),
    ('--config.data.image_size=9', 'image_size=9 does not fit 2 levels'),
])
def test_bad_values_fail_in_one_line_and_leave_the_workdir_alone(env, trained, override, message):
  workdir, _ = trained
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(workdir, '**'), recursive=True)}
  result = cli(env, f'--workdir={workdir}', override, '--config.training.num_steps=8')
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('ddpm_jax: error:')]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(workdir, '**'), recursive=True)}
  assert after == before


def test_missing_config_file_and_unknown_key_are_flag_errors(env, tmp_path):
  missing = cli(env, f'--workdir={tmp_path}/w', config='configs/nope.py')
  assert missing.returncode != 0 and 'nope.py' in missing.stderr and 'Traceback' not in missing.stderr
  unknown = cli(env, f'--workdir={tmp_path}/w', '--config.training.num_stepz=3')
  assert unknown.returncode != 0 and 'num_stepz' in unknown.stderr and 'Traceback' not in unknown.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_unwritable_workdir_is_one_line(env, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  result = cli(env, f'--workdir={blocker}/run')
  assert result.returncode == 2
  assert f"workdir '{blocker}/run' is not writable" in result.stderr and 'Traceback' not in result.stderr
  assert blocker.read_text() == 'not a directory'


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(env, tmp_path):
  import signal
  import time
  workdir = str(tmp_path / 'preempted')
  process = start(env, f'--workdir={workdir}', '--config.training.num_steps=100000',
                  '--config.training.sample_every_steps=100000')
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '2')) and time.time() < deadline:
    time.sleep(0.5)
  time.sleep(1.0)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  saved = max(checkpoint_steps(workdir))
  assert 2 < saved < 100000 and f'SIGTERM: saved checkpoint {saved}' in stdout
  resumed = cli(env, f'--workdir={workdir}', f'--config.training.num_steps={saved + 2}')
  assert resumed.returncode == 0 and f'Training from step {saved} to {saved + 2}' in resumed.stderr
