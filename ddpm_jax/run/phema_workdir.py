"""A post-hoc EMA reconstruction written as a workdir, which sample, eval, report and export open as any run.

The new workdir holds config.json (the source's, less training.phema_sigma_rels: it tracks no profiles), one
checkpoint at the reconstruction's step whose params and EMA params are the reconstruction (as an import's
are), and phema.json: the source, sigma_rel, step and each snapshot's weight.
"""
import dataclasses
import json
import os
import shutil
import tempfile

import jax
import numpy as np

from ddpm_jax import paths
from ddpm_jax.config import schema
from ddpm_jax.core import phema, sharding
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from ddpm_jax.run import phema_snapshots
from ddpm_jax.run import workdir as workdir_lib


def check_out(out: str) -> None:
  """Returns None when out may become the new workdir: a path that doesn't exist or an empty folder."""
  if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
    raise ValueError(f'--out={out} already exists; give a new folder for the reconstructed workdir')


def check_request(workdir: str, sigma_rel: float, step: int | None, out: str) -> int:
  """Returns the step to reconstruct at, once every input is valid (nothing is read but names): else one line."""
  from ddpm_jax.reporting import runs  # pylint: disable=g-import-not-at-top  # its one-line workdir check
  runs.check_workdir(workdir)
  phema.check_sigma_rel(sigma_rel, '--sigma_rel')
  step = phema_snapshots.check_step(phema_snapshots.list_snapshots(workdir), step, workdir)
  check_out(out)
  return step


def reconstructed_config(config: schema.Config) -> schema.Config:
  """Returns the source's config with no tracked profiles (the reconstruction's state has none)."""
  return dataclasses.replace(config, training=dataclasses.replace(config.training, phema_sigma_rels=()))


def reconstructed_state(config: schema.Config, params: dict, step: int):
  """Returns the train state of a reconstruction: params and EMA params the reconstruction, at `step`."""
  components = components_lib.build(config)
  state = components_lib.initial_state(config, components)
  params = sharding.replicate(jax.tree_util.tree_map(np.asarray, params), components.mesh)
  return state.replace(step=state.step + step, params=params,
                       ema_params=jax.tree_util.tree_map(lambda p: p.copy(), params),
                       opt_state=components.optimizer.init(params))


def write_workdir(workdir: str, sigma_rel: float, step: int | None, out: str) -> dict:
  """Writes the EMA of sigma_rel at step (default: the last snapshot's) as the workdir out; returns its record."""
  step = check_request(workdir, sigma_rel, step, out)
  config = reconstructed_config(workdir_lib.load_config(workdir))
  params, record = phema_snapshots.reconstruct(workdir, sigma_rel, step)
  state = reconstructed_state(config, params, step)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.phema-', dir=parent)  # a failed write leaves out as it was
  try:
    manager = checkpoints.make_manager(staging, config.training.keep_checkpoints)
    checkpoints.save(manager, step, state)
    checkpoints.check_saved(manager, step, wait=True)
    manager.close()
    workdir_lib.write_config(paths.Workdir(staging).config_file, config)
    with open(paths.Workdir(staging).phema_record, 'w') as f:
      json.dump(record, f, indent=2)
    if os.path.isdir(out):
      os.rmdir(out)  # empty (check_out)
    os.replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return record
