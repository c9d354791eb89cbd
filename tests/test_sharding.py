"""Data parallelism on 4 CPU devices: the same global batch gives the same step and samples as on one device."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(ROOT, 'tests', 'programs', 'four_devices.py')


def test_train_step_and_sampler_on_four_devices_equal_one_device(adam_atol):
  learning_rate = 1e-3  # sums of 8 images x 64 pixels (the 8 px level) per gradient element
  settings = {'learning_rate': learning_rate, 'atol': adam_atol(learning_rate, 8 * 64)}
  # The user's XLA_FLAGS (e.g. the README's other-CPU numerics) stay; ours come last, so they win. One
  # interpreter for both checks: a start and the tiny model's compiles are most of the cost.
  flags = '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
  result = subprocess.run([sys.executable, PROGRAM, json.dumps(settings)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0 and 'EQUAL' in result.stdout, result.stderr[-3000:]
