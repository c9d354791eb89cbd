"""Fault injection, each in its own workdir: SIGKILL mid-run, a damaged checkpoint, a full disk, a config
change on resume, and NaN losses. Every one must keep the earlier good checkpoints. Kills and the file
size limit need a process of their own (the CLI); the rest runs in-process, as main.run.

Bit-exactness is checked through the digest each checkpoint stores: the SHA-256 of the whole train state
(step, params, EMA, optimizer state, key), so equal digests mean equal states, bit for bit.
"""
import asyncio
import gc
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clitools import ROOT, command, error_line
from ddpm_jax import errors
from ddpm_jax.run import checkpoints
from ddpm_jax.reporting.runs import scalars
from runs import TWELVE_STEPS, checkpoint_steps, copy_run, digest, run

# Orbax leaves the coroutines of a failed read unawaited (damaged checkpoints, other shapes, on purpose); Python
# reports them whenever they are collected.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning',
                                        'ignore:coroutine .* was never awaited:RuntimeWarning')

STEPS = TWELVE_STEPS['training.num_steps']
RUN = tuple(f'--config.{key}={value}' for key, value in TWELVE_STEPS.items())


def train(workdir, extra=None, **kwargs):
  """Trains the 12-step run in workdir, in this process."""
  run(workdir, {**TWELVE_STEPS, **(extra or {})}, **kwargs)


def test_same_config_and_seed_give_the_same_loss_curve_and_state(trained_12, tmp_path):
  again = str(tmp_path / 'again')
  train(again)
  assert scalars(again)['loss'] == scalars(trained_12)['loss'] and len(scalars(again)['loss']) == STEPS
  assert digest(again, STEPS) == digest(trained_12, STEPS)


# The kills land as soon as the run has logged step 4 (in step 5's work, checkpoint 3's save perhaps still being
# finished) and step 9 (as checkpoint 9's save starts). Progress picks the moment, not a clock: on any machine,
# however fast or busy, each kill lands mid-run; where in the step it lands varies with the poll's lag.
KILL_AFTER_STEPS = (4, 9)


# What a run must not print at the default verbosity: JAX's, TensorFlow's and Orbax's start-up notices and internals.
LIBRARY_NOISE = re.compile(r"Unable to initialize backend|oneDNN|absl::InitializeLog|Metadata file does not exist|"
                           r"orbax|Exception ignored|Traceback")


def kill_once_logged(env, workdir: str, step: int, log_path) -> None:
  """Starts the 12-step run in workdir and SIGKILLs it as soon as it has logged `step` (every step is logged).

  Fails unless the run got there and was still going when killed, or if it printed the libraries' noise.
  """
  with open(log_path, 'w') as log, open(f'{log_path}.stderr', 'w') as errors_log:
    process = subprocess.Popen(command(f'--workdir={workdir}', *RUN), cwd=ROOT, env=env, stdout=log,
                               stderr=errors_log)
  logged = re.compile(rf'^step {step}/{STEPS} ', re.MULTILINE)  # the run's line per logging period, on stdout
  deadline = time.monotonic() + 300
  try:
    while process.poll() is None and time.monotonic() < deadline and not logged.search(log_path.read_text()):
      time.sleep(0.01)
    running = process.poll() is None
  finally:
    process.kill()  # SIGKILL
    process.wait()
  assert running and logged.search(log_path.read_text()), \
      f'the run ended before it logged step {step}: {log_path.read_text()[-3000:]}'
  noise = LIBRARY_NOISE.search(open(f'{log_path}.stderr').read())
  assert not noise, open(f'{log_path}.stderr').read()[-3000:]


def test_sigkill_mid_run_twice_then_resume_ends_bit_exact(env, trained_12, tmp_path):
  workdir = str(tmp_path / 'killed')
  for step in KILL_AFTER_STEPS:
    kill_once_logged(env, workdir, step, tmp_path / f'killed_after_{step}.log')
  train(workdir)
  assert digest(workdir, STEPS) == digest(trained_12, STEPS)
  assert checkpoint_steps(workdir)[-1] == STEPS


def test_a_truncated_latest_checkpoint_is_set_aside_and_the_run_redone_exactly(trained_12, tmp_path, caplog, capsys):
  caplog.set_level(logging.INFO, logger='absl')
  workdir = copy_run(trained_12, tmp_path / 'damaged')
  state_files = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(workdir, 'checkpoints', str(STEPS)))
                 for f in files if os.sep + 'd' + os.sep in os.path.join(d, f)]
  # Every data file, not the largest alone: which file holds which arrays varies with the order Orbax's writes
  # finished in, and a truncated file that the restore does not read damages nothing (seen once in a full run).
  for state_file in state_files:
    with open(state_file, 'r+b') as f:
      f.truncate(os.path.getsize(state_file) // 2)
  earlier = {step: digest(workdir, step) for step in checkpoint_steps(workdir)[:-1]}
  train(workdir)
  printed = capsys.readouterr()
  # One line names the damaged checkpoint, where it went and the one used instead; no TensorStore spec, no traceback.
  damaged = [line for line in printed.out.splitlines() if f'Checkpoint {STEPS}' in line]
  assert len(damaged) == 1 and damaged[0].startswith(f'Checkpoint {STEPS} is damaged (')
  assert damaged[0].endswith(f': moved it to {workdir}/checkpoints_corrupt/{STEPS}; using checkpoint {STEPS - 3} '
                             'instead.')
  assert not LIBRARY_NOISE.search(printed.out + printed.err) and 'TensorStore' not in printed.out
  assert f'Training from step {STEPS - 3} to {STEPS}' in caplog.text
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_corrupt', str(STEPS)))
  assert digest(workdir, STEPS) == digest(trained_12, STEPS)
  assert {step: digest(workdir, step) for step in earlier} == earlier


def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoints(env, trained_12, tmp_path):
  workdir = copy_run(trained_12, tmp_path / 'full')  # checkpoints 9 and 12
  kept = {step: digest(workdir, step) for step in checkpoint_steps(workdir)}
  further = tuple(f'--config.{key}={value}' for key, value in {**TWELVE_STEPS, 'training.num_steps': 18}.items())
  # "Disk full" for files past 20 kB (bash's ulimit -f counts kB; Python ignores SIGXFSZ, so writes fail with
  # EFBIG): the state's data file (~400 kB) no longer fits, logs and grids (a few kB) still do. Set in the
  # child's shell, not with preexec_fn, which forks this multithreaded process.
  full = subprocess.run(['bash', '-c', 'ulimit -f 20 && exec "$@"', 'bash', *command(f'--workdir={workdir}', *further)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert full.returncode == 1, full.stderr[-3000:]
  error = error_line(full.stderr)
  assert error.startswith(f'ddpm_jax: error: could not save checkpoint 15 in {workdir}/checkpoints: File too large.')
  assert 'Earlier checkpoints are intact: [9, 12]' in error
  assert not LIBRARY_NOISE.search(full.stderr), full.stderr[-3000:]  # nothing of Orbax's failing threads
  assert {step: digest(workdir, step) for step in checkpoint_steps(workdir)} == kept


def test_resuming_with_another_model_or_schedule_is_refused_unless_allowed(trained_12, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  workdir = copy_run(trained_12, tmp_path / 'changed')
  before = open(os.path.join(workdir, 'config.json')).read()
  changed = {'training.num_steps': 15, 'diffusion.schedule': 'sigmoid'}
  with pytest.raises(ValueError) as refused:
    train(workdir, {**changed, 'model.base_channels': 12})
  error = str(refused.value)
  assert "diffusion.schedule: 'cosine' -> 'sigmoid'" in error and 'model.base_channels: 8 -> 12' in error
  assert 'training.num_steps' not in error and '--allow_config_change' in error
  assert open(os.path.join(workdir, 'config.json')).read() == before
  assert checkpoint_steps(workdir) == [9, 12]  # the quickstart keeps 2
  # Allowed, a change that keeps the shapes trains on; one that changes them still restores nothing.
  train(workdir, changed, allow_config_change=True)
  assert 'Training from step 12 to 15' in caplog.text
  assert json.load(open(os.path.join(workdir, 'config.json')))['diffusion']['schedule'] == 'sigmoid'
  assert [f for f in os.listdir(workdir) if f.startswith('config.') and f.endswith('Z.json')]
  after = open(os.path.join(workdir, 'config.json')).read()
  with pytest.raises(ValueError, match='can be restored'):
    train(workdir, {**changed, 'training.num_steps': 18, 'model.base_channels': 12}, allow_config_change=True)
  assert checkpoint_steps(workdir) == [12, 15] and not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
  assert open(os.path.join(workdir, 'config.json')).read() == after


def test_nan_losses_stop_the_run_naming_the_step_and_no_checkpoint_is_bad(tmp_path):
  workdir = str(tmp_path / 'diverged')
  with pytest.raises(errors.NonFiniteError) as stopped_run:
    run(workdir, {'training.num_steps': 40, 'training.learning_rate': 1e30, 'training.warmup_steps': 0,
                  'training.grad_clip': 0.0, 'training.log_every_steps': 1, 'training.checkpoint_every_steps': 1,
                  'training.max_nonfinite_steps': 3})
  error = str(stopped_run.value)
  assert 'steps in a row had a NaN/Inf loss or gradient' in error and 'the last good checkpoint is step' in error
  stopped = int(error.split('training stopped at step ')[1].split(':')[0])
  assert stopped < 40 and max(checkpoint_steps(workdir)) < stopped
  for step in checkpoint_steps(workdir):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
    for leaf in jax.tree_util.tree_leaves((state['params'], state['ema_params'], state['opt_state'])):
      assert np.isfinite(np.asarray(leaf)).all(), f'checkpoint {step}'


async def pending_read(loop):
  """A read as Orbax leaves it when another fails: pending, and touching its loop on the way out."""
  try:
    await asyncio.sleep(3600)
  finally:
    loop.call_soon(lambda: None)


def tensorstore_callback(loop):
  """What a TensorStore I/O thread does when a read or write ends: it reports the error with PyErr_Print."""
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    sys.excepthook(type(e), e, e.__traceback__)


def test_reads_abandoned_on_a_closed_event_loop_print_nothing(monkeypatch, capfd, caplog):
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  monkeypatch.setattr(sys, 'excepthook', sys.__excepthook__)
  checkpoints.silence_abandoned_io()
  loop = asyncio.new_event_loop()
  tasks = [loop.create_task(pending_read(loop)) for _ in range(3)]
  loop.run_until_complete(asyncio.sleep(0))
  loop.close()  # as Orbax closes its loop once a read fails, the others still pending
  del tasks
  gc.collect()
  io_thread = threading.Thread(target=tensorstore_callback, args=(loop,))
  io_thread.start()
  io_thread.join()
  assert capfd.readouterr().err == '' and 'Task was destroyed' not in caplog.text
  FailsWhenCollected()
  assert 'RuntimeError: another error' in capfd.readouterr().err  # everything else is reported as before


class FailsWhenCollected:

  def __del__(self):
    raise RuntimeError('another error')
