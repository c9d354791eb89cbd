"""Two processes on JAX's distributed runtime train like one process with two devices; only process 0 writes."""
import glob
import logging
import os
import re
import shutil
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from clitools import ROOT, checkpoint_steps, command
from ddpm_jax.reporting.runs import scalars
from ddpm_jax.run import distributed
import runs
from runs import restore_numpy

# Both processes together; a coordinator waiting for a peer that never comes must not hang CI.
# (~2-5 min on 2 busy cores with a cold compilation cache.)
TIMEOUT_S = 600
FAST_COMPILE = '--xla_backend_optimization_level=0'  # as tests/conftest.py

@pytest.fixture
def local_env(env):
  """Returns the session's CLI environment without SLURM variables: the runs must not join a real job."""
  return {k: v for k, v in env.items() if not k.startswith('SLURM_')}


def free_port() -> int:
  """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(env, argv, xla_flags):
  """Returns the started process of argv, with its output piped as text."""
  xla_flags = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()  # after the user's (README: other CPUs): ours win
  return subprocess.Popen(argv, cwd=ROOT, env=dict(env, XLA_FLAGS=xla_flags), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(processes: dict) -> dict:
  """Returns {name: (returncode, stderr)} once all end; kills them all if they are not done in TIMEOUT_S."""
  deadline, results = time.monotonic() + TIMEOUT_S, {}
  try:
    for name, process in processes.items():
      _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
      results[name] = (process.returncode, stderr)
  except subprocess.TimeoutExpired:
    for process in processes.values():
      process.kill()
    tails = {name: process.communicate()[1][-2000:] for name, process in processes.items()}
    pytest.fail(f'the runs did not end in {TIMEOUT_S} s; stderr tails: {tails}')
  failed = {name: stderr[-3000:] for name, (code, stderr) in results.items() if code != 0}
  assert not failed, failed
  return results


@pytest.mark.slow
def test_two_processes_end_where_one_process_does_and_resume_in_one(local_env, trained, tmp_path, adam_atol, caplog):
  two, one = str(tmp_path / 'two'), trained
  # --verbosity=0: absl's INFO lines (each process's devices, the files it wrote), hidden by default, on stderr.
  cluster = [f'--workdir={two}', f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2',
             '--verbosity=0']
  processes = {f'process {i}': start(local_env, command(*cluster, f'--process_id={i}'), FAST_COMPILE)
               for i in range(2)}
  # The reference: the session's `trained` run, the same config in one process on one device (the loader gives
  # each process its rows of the one-process global batch, so both runs train on the same batches; the
  # one-process, several-device case is tests/test_sharding.py's and test_resume.py's).
  results = finish(processes)

  assert 'Process 0 of 2, 1 of 2 devices' in results['process 0'][1]
  assert 'Process 1 of 2, 1 of 2 devices' in results['process 1'][1]
  assert checkpoint_steps(two) == checkpoint_steps(one) == [2, 4]
  # Gradients are summed over the two devices by gloo across processes, over the batch by XLA in one device:
  # other code, free to add in another order; the tolerance (float32 rounding amplified by Adam: the tiny
  # config's 1e-3, sums of 8 images x 64 pixels, ~3e-5) leaves room for another order, while other data or a lost step moves params by ~1e-3.
  distributed_state, reference_state = restore_numpy(two, 4), restore_numpy(one, 4)
  assert int(distributed_state['step']) == int(reference_state['step']) == 4
  atol = adam_atol(1e-3, 8 * 64)
  for name in ('params', 'ema_params'):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol),
                           distributed_state[name], reference_state[name])
  logged, reference_logged = scalars(two), scalars(one)
  assert set(logged['loss']) == {2, 4}
  for step in (2, 4):
    assert logged['loss'][step] == pytest.approx(reference_logged['loss'][step], rel=1e-5)

  # Process 0 alone wrote the logs, the grids and config.json; process 1 only logged to stderr.
  assert len(glob.glob(os.path.join(two, 'events.out.tfevents.*'))) == 1
  assert sorted(os.listdir(os.path.join(two, 'samples'))) == ['step_2.png', 'step_4.png']
  assert os.path.exists(os.path.join(two, 'config.json'))
  assert 'Wrote ' in results['process 0'][1] and 'Wrote ' not in results['process 1'][1]

  # 2 processes -> 1: the two-process run's checkpoint 2, resumed by one process, continues with the batches
  # the uninterrupted run draws (no data position is stored: batch i is a function of the step).
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(two, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  # In this process (one process, one device): 2 processes -> 1 without a CLI start's ~15 s of imports.
  caplog.set_level(logging.INFO, logger='absl')
  runs.run(resumed)
  assert 'Training from step 2 to 4' in caplog.text and 'Process 0 of 1, 1 of 1 devices' in caplog.text
  resumed_state = restore_numpy(resumed, 4)
  for name in ('params', 'ema_params'):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol),
                           resumed_state[name], reference_state[name])
  assert scalars(resumed)['loss'][4] == pytest.approx(reference_logged['loss'][4], rel=1e-5)


@pytest.mark.parametrize('flags,message', [
    ({'num_processes': 2}, '--num_processes=2 needs --coordinator_address and --process_id'),
    ({'coordinator_address': 'h:1', 'process_id': 0}, 'needs --num_processes'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, '--process_id=2 must be in 0..1'),
    ({'coordinator_address': 'h:1', 'num_processes': 0, 'process_id': 0}, '--num_processes=0 must be at least 1'),
    ({'coordinator_address': 'localhost', 'num_processes': 2, 'process_id': 0}, "'localhost' must be HOST:PORT"),
])
def test_bad_flag_combinations_are_one_line_errors(flags, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    distributed.check_flags(flags.get('coordinator_address'), flags.get('num_processes'), flags.get('process_id'))


def test_cli_reports_a_bad_combination_in_one_line_before_starting_anything(local_env, tmp_path):
  result = subprocess.run(command(f'--workdir={tmp_path}/w', '--num_processes=2', '--process_id=1'), cwd=ROOT,
                          env=local_env, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert ('ddpm_jax: error: --num_processes=2, --process_id=1 needs --coordinator_address; pass all three'
          in result.stderr), result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'w')


def test_slurm_is_detected_only_for_several_srun_tasks():
  srun = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[01-02]', 'SLURM_NTASKS': '2', 'SLURM_PROCID': '1',
          'SLURM_LOCALID': '0'}
  assert distributed.slurm_has_many_tasks(srun)
  assert not distributed.slurm_has_many_tasks(dict(srun, SLURM_NTASKS='1'))
  batch_shell = {k: v for k, v in srun.items() if k != 'SLURM_STEP_NODELIST'}
  assert not distributed.slurm_has_many_tasks(batch_shell)
  assert not distributed.slurm_has_many_tasks({})
