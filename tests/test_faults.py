"""Fault injection through the CLI, each in its own workdir: SIGKILL at random moments, a damaged checkpoint,
a full disk, a config change on resume, and NaN losses. Every one must keep the earlier good checkpoints.

Bit-exactness is checked through the digest each checkpoint stores: the SHA-256 of the whole train state
(step, params, EMA, optimizer state, key), so equal digests mean equal states, bit for bit.
"""
import datetime
import json
import os
import random
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clitools import ROOT, checkpoint_steps, cli, command, error_line
from ddpm_jax.events import scalars

STEPS = 12
RUN = (f'--config.training.num_steps={STEPS}', '--config.training.checkpoint_every_steps=3',
       '--config.training.log_every_steps=1', '--config.training.sample_every_steps=1000')


def digest(workdir, step):
  with open(os.path.join(workdir, 'checkpoints', str(step), 'digest', 'metadata')) as f:
    return json.load(f)['sha256']


def train(env, workdir, *extra, **kwargs):
  result = cli(env, f'--workdir={workdir}', *RUN, *extra, **kwargs)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """Returns an uninterrupted run of STEPS steps and the seconds its training loop took."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = train(env, workdir)
  assert 'Training from step 0 to 12' in result.stderr
  return workdir, loop_seconds(result.stderr)


def loop_seconds(stderr: str) -> float:
  """Returns the seconds between absl's 'Training from step' log line and its last line."""
  stamps = [(line, datetime.datetime.strptime(line[6:21], '%H:%M:%S.%f'))
            for line in stderr.splitlines() if re.match(r'[IWE]\d{4} \d\d:\d\d:\d\d\.\d{6}', line)]
  begun = next(stamp for line, stamp in stamps if 'Training from step' in line)
  return (stamps[-1][1] - begun).total_seconds()


def test_same_config_and_seed_give_the_same_loss_curve_and_state(env, reference, tmp_path):
  again = str(tmp_path / 'again')
  train(env, again)
  assert scalars(again)['loss'] == scalars(reference[0])['loss'] and len(scalars(again)['loss']) == STEPS
  assert digest(again, STEPS) == digest(reference[0], STEPS)


def kill_at_random(env, workdir, seconds, rng, log_path):
  """Starts the run and SIGKILLs it a random time into its training loop; returns whether it finished first."""
  with open(log_path, 'w') as log:
    process = subprocess.Popen(command(f'--workdir={workdir}', *RUN), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=log)
  deadline = time.time() + 300
  try:
    while process.poll() is None and time.time() < deadline:
      with open(log_path) as f:
        if 'Training from step' in f.read():
          break
      time.sleep(0.05)
    time.sleep(rng.uniform(0, seconds))
    finished = process.poll() is not None
  finally:
    process.kill()  # SIGKILL
    process.wait()
  return finished


def test_sigkill_at_random_moments_then_resume_ends_bit_exact(env, reference, tmp_path):
  seed = random.randrange(10**6)
  rng, workdir = random.Random(seed), str(tmp_path / 'killed')
  # Kill anywhere in the training loop (start-up excluded), saves and grids included.
  seconds = reference[1]
  kills = sum(not kill_at_random(env, workdir, seconds, rng, tmp_path / 'log') for _ in range(2))
  train(env, workdir)
  assert kills > 0, f'seed {seed}: every run finished before its kill'
  assert digest(workdir, STEPS) == digest(reference[0], STEPS), f'seed {seed}'
  assert checkpoint_steps(workdir)[-1] == STEPS


def test_a_truncated_latest_checkpoint_is_set_aside_and_the_run_redone_exactly(env, reference, tmp_path):
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(reference[0], workdir)
  state_files = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(workdir, 'checkpoints', str(STEPS)))
                 for f in files if os.sep + 'd' + os.sep in os.path.join(d, f)]
  biggest = max(state_files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  earlier = {step: digest(workdir, step) for step in checkpoint_steps(workdir)[:-1]}
  result = train(env, workdir)
  assert f'Checkpoint {STEPS} is damaged' in result.stdout and f'Training from step {STEPS - 3} to {STEPS}' in result.stderr
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_corrupt', str(STEPS)))
  assert digest(workdir, STEPS) == digest(reference[0], STEPS)
  assert {step: digest(workdir, step) for step in earlier} == earlier


def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoints(env, tmp_path):
  workdir = str(tmp_path / 'full')
  train(env, workdir, '--config.training.num_steps=6')
  kept = {step: digest(workdir, step) for step in checkpoint_steps(workdir)}
  # "Disk full" for files past 20 kB (bash's ulimit -f counts kB; Python ignores SIGXFSZ, so writes fail with
  # EFBIG): the state's data file (~400 kB) no longer fits, logs and grids (a few kB) still do. Set in the
  # child's shell, not with preexec_fn, which forks this multithreaded process.
  full = subprocess.run(['bash', '-c', 'ulimit -f 20 && exec "$@"', 'bash', *command(f'--workdir={workdir}', *RUN)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert full.returncode == 1, full.stderr[-3000:]
  error = error_line(full.stderr)
  assert error.startswith(f'ddpm_jax: error: could not save checkpoint 9 in {workdir}/checkpoints: File too large.')
  assert 'Earlier checkpoints are intact: [3, 6]' in error
  assert {step: digest(workdir, step) for step in checkpoint_steps(workdir)} == kept


def test_resuming_with_another_model_or_schedule_is_refused_unless_allowed(env, reference, tmp_path):
  workdir = str(tmp_path / 'changed')
  shutil.copytree(reference[0], workdir)
  before = {name: open(os.path.join(workdir, name)).read() for name in ('config.json',)}
  refused = cli(env, f'--workdir={workdir}', *RUN, '--config.training.num_steps=15', '--config.diffusion.schedule=sigmoid',
                '--config.model.base_channels=12')
  assert refused.returncode == 2
  error = error_line(refused.stderr)
  assert "diffusion.schedule: 'cosine' -> 'sigmoid'" in error and 'model.base_channels: 8 -> 12' in error
  assert 'training.num_steps' not in error and '--allow_config_change' in error
  assert open(os.path.join(workdir, 'config.json')).read() == before['config.json']
  assert checkpoint_steps(workdir) == [9, 12]  # the quickstart keeps 2
  # Allowed, a change that keeps the shapes trains on; one that changes them still restores nothing.
  allowed = cli(env, f'--workdir={workdir}', *RUN, '--config.training.num_steps=15', '--config.diffusion.schedule=sigmoid',
                '--allow_config_change')
  assert allowed.returncode == 0 and 'Training from step 12 to 15' in allowed.stderr, allowed.stderr[-3000:]
  assert json.load(open(os.path.join(workdir, 'config.json')))['diffusion']['schedule'] == 'sigmoid'
  assert [f for f in os.listdir(workdir) if f.startswith('config.') and f.endswith('Z.json')]
  after = open(os.path.join(workdir, 'config.json')).read()
  reshaped = cli(env, f'--workdir={workdir}', *RUN, '--config.training.num_steps=18', '--config.diffusion.schedule=sigmoid',
                 '--config.model.base_channels=12', '--allow_config_change')
  assert reshaped.returncode == 2 and 'can be restored' in error_line(reshaped.stderr)
  assert checkpoint_steps(workdir) == [12, 15] and not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
  assert open(os.path.join(workdir, 'config.json')).read() == after


def test_nan_losses_stop_the_run_naming_the_step_and_no_checkpoint_is_bad(env, tmp_path):
  workdir = str(tmp_path / 'diverged')
  result = cli(env, f'--workdir={workdir}', '--config.training.num_steps=40', '--config.training.learning_rate=1e30',
               '--config.training.warmup_steps=0', '--config.training.grad_clip=0', '--config.training.log_every_steps=1',
               '--config.training.checkpoint_every_steps=1', '--config.training.max_nonfinite_steps=3')
  assert result.returncode == 1, result.stderr[-3000:]
  error = error_line(result.stderr)
  assert 'steps in a row had a NaN/Inf loss or gradient' in error and 'the last good checkpoint is step' in error
  stopped = int(error.split('training stopped at step ')[1].split(':')[0])
  assert stopped < 40 and max(checkpoint_steps(workdir)) < stopped
  for step in checkpoint_steps(workdir):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
    for leaf in jax.tree_util.tree_leaves((state['params'], state['ema_params'], state['opt_state'])):
      assert np.isfinite(np.asarray(leaf)).all(), f'checkpoint {step}'
