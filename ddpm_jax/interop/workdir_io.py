"""The workdir side of `python -m ddpm_jax.convert`: an imported model becomes a workdir, a workdir an export.

An import writes config.json and one Orbax checkpoint at step 0 whose params and EMA params are
the imported weights, so --mode=sample, --mode=eval and training (fine-tuning) open it as they open
any run. An export reads a checkpoint the way --mode=sample does and writes a DDPMPipeline folder.
"""
import os
import shutil
import tempfile

import jax

from ddpm_jax import paths
from ddpm_jax.config import checks as validation
from ddpm_jax.config import schema
from ddpm_jax.core import sharding
from ddpm_jax.interop import diffusers_io as convert
from ddpm_jax.reporting import runs as events
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from ddpm_jax.run import workdir as workdir_lib

PARAMS = ('ema', 'raw')


def check_new_workdir(workdir: str) -> None:
  """Returns None when workdir holds no run yet; else a one-line ValueError (an import never mixes into a run)."""
  taken = paths.Workdir(workdir).has_run()
  if taken:
    raise ValueError(f'--workdir={workdir} already holds a run ({", ".join(taken)}); import into a new workdir')


def import_to_workdir(source: str, workdir: str, base_config=None, cache_dir: str | None = None) -> schema.Config:
  """Writes workdir/config.json and checkpoint 0 of the source's weights; returns the config."""
  check_new_workdir(workdir)
  config, params = convert.from_diffusers(source, base_config, cache_dir)
  validation.validate_config(config)
  workdir_lib.check_writable(workdir)  # the first write: every check above passed
  components = components_lib.build(config)
  params = sharding.replicate(params, components.mesh)
  state = components_lib.initial_state(config, components)
  state = state.replace(params=params, ema_params=jax.tree_util.tree_map(lambda p: p.copy(), params),
                        opt_state=components.optimizer.init(params))
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  checkpoints.save(manager, 0, state)
  checkpoints.check_saved(manager, 0, wait=True)
  manager.close()
  if jax.process_index() == 0:
    workdir_lib.write_config(paths.Workdir(workdir).config_file, config)
  return config


def last_evaluation(workdir: str, step: int) -> dict:
  """Returns the metrics of the workdir's newest evaluation at or before step ({} when none)."""
  evals = {s: p for s, p in events.files_by_step(paths.Workdir(workdir).evals, paths.EVAL_FILE).items()
           if s <= step}
  if not evals:
    return {}
  latest = max(evals)
  return {**events.read_json(evals[latest]), 'step': latest}


def check_out_dir(out: str, workdir: str, overwrite: bool) -> None:
  """Returns None when out may receive an export; refuses a non-empty folder (unless overwrite) and the workdir."""
  out_path, work_path = os.path.realpath(out), os.path.realpath(workdir)
  if out_path == work_path or work_path.startswith(out_path + os.sep):
    raise ValueError(f'--out={out} holds the workdir {workdir}; export to a folder of its own')
  if os.path.isfile(out):
    raise ValueError(f'--out={out} is a file; give a folder (new or empty) for the export')
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise ValueError(f'--out={out} is not empty; choose a new folder or pass --overwrite to replace an export')
    if not os.path.isfile(os.path.join(out, 'model_index.json')):
      raise ValueError(f'--out={out} is not empty and holds no model_index.json, so it is no earlier export: '
                       '--overwrite replaces only exports; choose a new folder')


def export_workdir(workdir: str, out: str, checkpoint_step: int | None = None, params: str = 'ema',
                   overwrite: bool = False) -> str:
  """Writes the checkpoint's EMA (or raw) params as a DDPMPipeline folder at out; returns out."""
  if params not in PARAMS:
    raise ValueError(f'--params={params!r} is not one of {", ".join(PARAMS)}')
  events.check_workdir(workdir)
  check_out_dir(out, workdir, overwrite)
  config = workdir_lib.load_config(workdir)
  from ddpm_jax.run import modes  # pylint: disable=g-import-not-at-top
  run = modes.open_trained_run(config, workdir)
  newest = max(run.steps(), default=None)  # before the restore, which sets a damaged newest one aside
  state = run.restore(checkpoint_step)
  step = int(state.step)
  weights = jax.device_get(state.ema_params if params == 'ema' else state.params)
  if jax.process_index() != 0:
    return out
  card = convert.model_card(config, step, last_evaluation(workdir, step),
                            sum(v.size for v in jax.tree_util.tree_leaves(weights)), params=params,
                            newest_step=newest if checkpoint_step is None else None)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=parent)  # a failed export leaves out as it was
  try:
    convert.to_diffusers(config, weights, staging, card)
    if os.path.isdir(out):
      shutil.rmtree(out)
    os.replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; what a failed export left otherwise
  return out
