"""--mode=eval with eval.guidance_scales: each classifier-free guidance w scored at each chosen step.

Every w samples the same classes (balanced) from the same noise as the others, so the metrics differ by w
alone; each is written to eval/guidance/step_<N>_w_<w>.json with its guidance_scale. eval/step_<N>.json, the
evaluation at eval.guidance_scale, is left as it is.
"""
import json
import os
import re

import jax
from absl import logging

from ddpm_jax import paths

# eval/guidance/step_<N>_w_<w>.json; group 2 is w, as f'{w:g}' writes it.
GUIDANCE_EVAL_FILE = re.compile(r'step_(\d+)_w_(\d[0-9.e+-]*)\.json')


def guidance_evals(workdir: str) -> str:
  """Returns eval/guidance/: the evaluations of a guidance sweep."""
  return paths.Workdir(workdir).guidance_evals


def guidance_eval_file(workdir: str, step: int, guidance_scale: float) -> str:
  """Returns eval/guidance/step_<N>_w_<w>.json, w as f'{w:g}' writes it (3.0 -> 3, 1.5 -> 1.5)."""
  return paths.Workdir(workdir).guidance_eval_file(step, guidance_scale)


def write_result(workdir: str, step: int, guidance_scale: float, metrics: dict) -> str:
  """Writes eval/guidance/step_<N>_w_<w>.json (with step and guidance_scale), atomically; returns its path."""
  path = guidance_eval_file(workdir, step, guidance_scale)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': step, **metrics, 'guidance_scale': float(guidance_scale)}, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def evaluate(config, workdir: str, evaluation, trained_run, checkpoint_step: int | None = None) -> dict:
  """Evaluates the EMA params at every eval.guidance_scales w and chosen step; returns {(step, w): metrics}.

  The steps are --checkpoint_step's, else every checkpoint's.
  """
  steps = [checkpoint_step] if checkpoint_step is not None else trained_run.steps()
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {trained_run.manager.directory} to evaluate')
  results = {}
  for step in steps:
    state = trained_run.restore(step)
    for guidance_scale in config.eval.guidance_scales:
      metrics = evaluation.evaluate(state.ema_params, state.rng, guidance_scale=guidance_scale)
      results[step, guidance_scale] = metrics
      if jax.process_index() == 0:  # every process samples (the params span them all); one writes
        logging.info('Wrote %s', write_result(workdir, step, guidance_scale, metrics))
      print(evaluation.summary(step, metrics))
  return results
