"""Driving runs in-process, as `python -m ddpm_jax.main` would (main.run, after flag parsing): configs and workdirs.

The process boundary adds nothing to most checks (a run's files, resume, errors), and every CLI start costs
~20 s of imports and compiling on the CI's 2 cores, so only tests of signals, several processes and the CLI's
own messages and exit codes start a subprocess (tests/clitools.py).
"""
import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from ddpm_jax import main
from ddpm_jax.config import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny.py')


def tiny_configdict():
  """Returns tests/configs/tiny.py's ConfigDict, as a config file gives it to the CLI."""
  spec = importlib.util.spec_from_file_location('tiny_config', TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(overrides: dict | None = None):
  """Returns tests/configs/tiny.py's typed config with {'section.key': value} overrides applied (and checked)."""
  return convert.with_values(convert.from_configdict(tiny_configdict()), overrides or {})


def run(workdir: str, overrides: dict | None = None, mode: str = 'train', checkpoint_step: int | None = None,
        allow_config_change: bool = False):
  """Runs the tiny config (with overrides) in workdir as the CLI's --mode would, in this process."""
  main.run(tiny_config(overrides), str(workdir), mode, checkpoint_step, allow_config_change)


def copy_run(source: str, target) -> str:
  """Returns target, a copy of the workdir source (tests change copies of the session's shared runs)."""
  shutil.copytree(source, str(target))
  return str(target)


def checkpoint_steps(workdir: str) -> list:
  """Returns the steps of the workdir's checkpoints, ascending."""
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def digest(workdir: str, step: int) -> str:
  """Returns the SHA-256 of checkpoint `step`'s whole train state, as the checkpoint stores it."""
  with open(os.path.join(workdir, 'checkpoints', str(step), 'digest', 'metadata')) as f:
    return json.load(f)['sha256']


def restore_numpy(workdir: str, step: int) -> dict:
  """Returns checkpoint `step`'s train state as numpy arrays (host memory: any device count can read it)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


# The fault tests' run: long enough to kill in the middle, a checkpoint every 3 steps.
TWELVE_STEPS = {'training.num_steps': 12, 'training.checkpoint_every_steps': 3, 'training.log_every_steps': 1,
                'training.sample_every_steps': 1000}
