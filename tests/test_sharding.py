"""Data parallelism on 4 CPU devices: the same global batch gives the same step and samples as on one device, and
a one-device run resumed on 4 devices continues with the same batches."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ddpm_jax.reporting.runs import scalars
from runs import copy_run, restore_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(ROOT, 'tests', 'programs', 'four_devices.py')


def test_on_four_devices_the_train_step_and_sampler_equal_one_device_and_a_run_resumes_on_them(adam_atol, trained,
                                                                                                tmp_path):
  learning_rate = 1e-3  # sums of 8 images x 64 pixels (the 8 px level) per gradient element
  resumed = copy_run(trained, tmp_path / 'four_devices')
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  settings = {'learning_rate': learning_rate, 'atol': adam_atol(learning_rate, 8 * 64), 'resume': resumed}
  # The user's XLA_FLAGS (e.g. the README's other-CPU numerics) stay; ours come last, so they win. One
  # interpreter for all checks: a start and the tiny model's compiles are most of the cost.
  flags = '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
  result = subprocess.run([sys.executable, PROGRAM, json.dumps(settings)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0 and 'EQUAL' in result.stdout, result.stderr[-3000:]
  # The tiny run (trained on 1 device), resumed at step 2 on 4: its batches are a function of the step alone.
  assert 'Training from step 2 to 4 on 4 devices (1 process;' in result.stdout, result.stdout
  # The batch's gradient is summed over 4 devices instead of 1: equal to float32 rounding amplified by Adam (the
  # tiny config's 1e-3, sums of 8 images x 64 pixels: ~3e-5), while other batches move the params by ~1e-3 and the
  # loss by ~1e-2.
  four, one = restore_numpy(resumed, 4), restore_numpy(trained, 4)
  assert int(four['step']) == 4
  for name in ('params', 'ema_params'):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=settings['atol']), four[name],
                           one[name])
  assert scalars(resumed)['loss'][4] == pytest.approx(scalars(trained)['loss'][4], rel=1e-4)
