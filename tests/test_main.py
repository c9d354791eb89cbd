"""End to end: train, log, checkpoint, grid, resume, sample, bad input; and what the CLI itself owns (flags, the
one-line errors and their exit codes, SIGTERM), through subprocesses."""
import glob
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from clitools import cli, error_line, start
from ddpm_jax.reporting.runs import scalars
from runs import ROOT, checkpoint_steps, copy_run, run


def test_train_writes_config_events_checkpoints_and_grids(trained):
  with open(os.path.join(trained, 'config.json')) as f:
    assert '"num_steps": 4' in f.read()
  logged = scalars(trained)
  assert set(logged['loss']) == {2, 4} and all(0 < v < 3 for v in logged['loss'].values())
  assert set(logged['grad_norm']) == {2, 4} and set(logged['learning_rate']) == {2, 4}
  assert logged['learning_rate'][2] == pytest.approx(1e-3)  # warm-up of 2 steps reached the peak
  assert 'steps_per_sec' in logged
  assert checkpoint_steps(trained) == [2, 4]
  for step in (2, 4):
    grid = np.asarray(Image.open(os.path.join(trained, 'samples', f'step_{step}.png')))
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 258, 2 + 2 * 258, 3)  # 4 images of 8 px x 32 in a 2x2 grid


def test_second_run_resumes_and_trains_only_the_remaining_steps(trained, tmp_path, caplog, capsys):
  caplog.set_level(logging.INFO, logger='absl')
  resumed = copy_run(trained, tmp_path / 'resumed')
  run(resumed, {'training.num_steps': 6})
  assert 'Restored checkpoint 4' in caplog.text and 'Training from step 4 to 6' in caplog.text
  assert checkpoint_steps(resumed) == [4, 6]  # keep_checkpoints=2
  assert set(scalars(resumed)['loss']) == {2, 4, 6}
  run(resumed, {'training.num_steps': 6})
  assert 'Run already finished at step 6' in capsys.readouterr().out
  assert checkpoint_steps(resumed) == [4, 6]


def test_sample_mode_writes_grid_and_npz(trained, tmp_path):
  workdir = copy_run(trained, tmp_path / 'sampled')
  run(workdir, mode='sample')
  npz = glob.glob(os.path.join(workdir, 'samples', 'sample_step_4_*.npz'))
  assert [os.path.basename(path) for path in npz] == ['sample_step_4_ddim5.npz']
  with np.load(npz[0]) as arrays:
    assert arrays.files == ['images']  # an unconditional model's samples have no labels
    images = arrays['images']
  assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
  assert os.path.exists(npz[0][:-4] + '.png')
  with pytest.raises(ValueError, match=r'no checkpoint at step 3 .*available: \[2, 4\]'):
    run(workdir, mode='sample', checkpoint_step=3)


def files_and_times(workdir: str) -> dict:
  return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(workdir, '**'), recursive=True)}


@pytest.mark.parametrize('key,value,message', [
    ('diffusion.schedule', 'quadratic', "diffusion.schedule='quadratic' is not one of {'linear', 'cosine'"),
    ('diffusion.loss', 'l3', "diffusion.loss='l3' is not one of {'mse', 'mae', 'huber'}"),
    ('diffusion.prediction', 'score', "diffusion.prediction='score' is not one of {'eps', 'x0', 'v'}"),
    ('data.image_size', 9, 'image_size=9 does not fit 2 levels'),
])
def test_bad_values_fail_with_their_message_and_leave_the_workdir_alone(trained, key, value, message):
  before = files_and_times(trained)
  with pytest.raises(ValueError, match=re.escape(message)):
    run(trained, {key: value, 'training.num_steps': 8})
  assert files_and_times(trained) == before


def test_a_bad_value_is_one_line_on_stderr_with_exit_status_2_and_leaves_the_workdir_alone(env, trained):
  before = files_and_times(trained)
  result = cli(env, f'--workdir={trained}', '--config.sampling.sampler=euler', '--config.training.num_steps=8')
  assert result.returncode == 2
  assert "sampling.sampler='euler' is not one of {'ddpm', 'ddim'" in error_line(result.stderr)
  assert 'Traceback' not in result.stderr
  assert files_and_times(trained) == before


def test_missing_config_file_and_unknown_key_are_flag_errors(env, tmp_path):
  missing = cli(env, f'--workdir={tmp_path}/w', config='configs/nope.py')
  assert missing.returncode != 0 and 'nope.py' in missing.stderr and 'Traceback' not in missing.stderr
  unknown = cli(env, f'--workdir={tmp_path}/w', '--config.training.num_stepz=3')
  assert unknown.returncode != 0 and 'num_stepz' in unknown.stderr and 'Traceback' not in unknown.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_help_exits_0_and_an_override_without_config_points_to_the_workdirs_config(env, tmp_path):
  bare = [sys.executable, '-m', 'ddpm_jax.main']
  helped = subprocess.run(bare + ['--help'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert helped.returncode == 0 and '--workdir' in helped.stdout + helped.stderr
  workdir = tmp_path / 'w'
  override = subprocess.run(bare + [f'--workdir={workdir}', '--mode=eval', '--config.eval.num_samples=8'], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
  assert override.returncode == 2 and override.stdout == ''
  assert override.stderr == (f'ddpm_jax: error: --config.eval.num_samples overrides a key of --config, which is not '
                             f"given; to change a key of the workdir's saved config, add "
                             f'--config=configs/workdir.py:{workdir}\n')


def test_unwritable_workdir_is_one_error(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(PermissionError, match=f"workdir .{blocker}/run. is not writable"):
    run(f'{blocker}/run')
  assert blocker.read_text() == 'not a directory'


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(env, tmp_path, caplog):
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
  caplog.set_level(logging.INFO, logger='absl')
  run(workdir, {'training.num_steps': saved + 2, 'training.sample_every_steps': 100000})
  assert f'Training from step {saved} to {saved + 2}' in caplog.text


def test_sample_reads_the_workdirs_config_when_none_is_given_and_train_asks_for_one(env, trained, tmp_path):
  workdir = copy_run(trained, tmp_path / 'w')
  bare = [sys.executable, '-m', 'ddpm_jax.main', f'--workdir={workdir}']
  sampled = subprocess.run(bare + ['--mode=sample'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  assert glob.glob(os.path.join(workdir, 'samples', 'sample_step_4_ddim5.npz'))
  before = files_and_times(workdir)
  refused = subprocess.run(bare, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert refused.returncode == 2
  assert '--config is required to train' in error_line(refused.stderr)
  assert files_and_times(workdir) == before


def test_configs_workdir_py_is_the_saved_config_to_override(trained):
  spec = importlib.util.spec_from_file_location('workdir_config', os.path.join(ROOT, 'configs', 'workdir.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with open(os.path.join(trained, 'config.json')) as f:
    saved = json.load(f)
  assert json.loads(module.get_config(trained).to_json_best_effort()) == saved
