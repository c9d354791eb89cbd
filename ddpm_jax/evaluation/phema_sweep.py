"""--mode=eval with eval.phema_sigma_rels: the post-hoc EMA of each sigma_rel at each chosen step, evaluated.

Each reconstruction (run/phema_snapshots.py) is scored as the EMA params are, with the same samples' noise,
and written to eval/phema/step_<N>_sigma_<s>.json with its sigma_rel; eval/step_<N>.json, the classic EMA's,
is left as it is.
"""
import json
import os

import jax
from absl import logging

from ddpm_jax import paths
from ddpm_jax.core import keys, sharding
from ddpm_jax.run import phema_snapshots


def sweep_steps(workdir: str, checkpoint_steps: list[int], checkpoint_step: int | None) -> list[int]:
  """Returns the steps to sweep: --checkpoint_step, else every checkpoint's step that the snapshots cover."""
  snapshots = phema_snapshots.list_snapshots(workdir)
  if checkpoint_step is not None:
    return [phema_snapshots.check_step(snapshots, checkpoint_step, workdir, '--checkpoint_step')]
  phema_snapshots.check_step(snapshots, None, workdir)  # a workdir without snapshots: one line
  steps = [s for s in checkpoint_steps if snapshots[0].step <= s <= snapshots[-1].step]
  if not steps:
    raise ValueError(f'no checkpoint of {workdir} ({checkpoint_steps}) lies within its post-hoc EMA snapshots, '
                     f'steps {snapshots[0].step} to {snapshots[-1].step}; pass --checkpoint_step')
  return steps


def write_result(workdir: str, step: int, sigma_rel: float, metrics: dict) -> str:
  """Writes eval/phema/step_<N>_sigma_<s>.json (with step, sigma_rel and 'ema': 'phema'), atomically; returns it."""
  path = paths.Workdir(workdir).phema_eval_file(step, sigma_rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': step, 'sigma_rel': sigma_rel, 'ema': 'phema', **metrics}, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def evaluate(config, workdir: str, evaluation, mesh, checkpoint_steps: list[int],
             checkpoint_step: int | None = None) -> dict:
  """Evaluates every eval.phema_sigma_rels reconstruction at each chosen step; returns {(step, sigma_rel): metrics}.

  The samples' noise is the classic EMA's (the run's base key), so the metrics differ by the weights alone.
  """
  results = {}
  rng = keys.base_key(config.seed)
  for step in sweep_steps(workdir, checkpoint_steps, checkpoint_step):
    for sigma_rel in config.eval.phema_sigma_rels:
      params, _ = phema_snapshots.reconstruct(workdir, sigma_rel, step)
      metrics = evaluation.evaluate(sharding.replicate(params, mesh), rng)
      results[step, sigma_rel] = metrics
      if jax.process_index() == 0:
        path = write_result(workdir, step, sigma_rel, metrics)
        logging.info('Wrote %s', path)
      print(f'sigma_rel {sigma_rel:g}, {evaluation.summary(step, metrics)}')
  return results
