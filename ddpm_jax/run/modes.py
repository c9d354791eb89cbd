"""The modes that read a trained workdir: --mode=sample and --mode=eval.

They write samples and scores, never checkpoints or config.json; like training, reading the
newest checkpoint sets a damaged one aside (checkpoints_corrupt/) and reads the newest intact one.
"""
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ddpm_jax import paths
from ddpm_jax.config import schema
from ddpm_jax.core import keys
from ddpm_jax.run import build as components_lib
from ddpm_jax.run import checkpoints
from ddpm_jax.run import images
from ddpm_jax.run import progress
from ddpm_jax.run import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A workdir opened for reading: what its config builds, and its checkpoints."""
  config: schema.Config
  components: components_lib.Components
  manager: ocp.CheckpointManager

  def steps(self) -> list[int]:
    """Returns the steps of the workdir's checkpoints, ascending."""
    return sorted(self.manager.all_steps())

  def restore(self, step: int | None = None):
    """Returns the train state of checkpoint `step` (default: the newest intact one)."""
    return checkpoints.restore(self.manager, components_lib.abstract_state(self.config, self.components), step=step)


def open_trained_run(config: schema.Config, workdir: str, allow_config_change: bool = False) -> TrainedRun:
  """Returns the workdir opened for reading, once its saved config.json allows this config.

  A workdir without checkpoints/ is refused before anything is made there: reading creates no workdir.
  """
  if not os.path.isdir(paths.Workdir(workdir).checkpoints):
    what = 'holds no checkpoints/' if os.path.isdir(workdir) else 'does not exist'
    raise FileNotFoundError(f'--workdir={workdir} {what}, so there is no trained model to read; give the workdir of '
                            'a trained or imported run (python -m ddpm_jax.convert import makes one)')
  workdir_lib.check_config(workdir, config, True, allow_config_change)
  components = components_lib.build(config)
  return TrainedRun(config, components, checkpoints.make_manager(workdir, config.training.keep_checkpoints))


def sample(config: schema.Config, workdir: str, checkpoint_step: int | None = None,
           allow_config_change: bool = False) -> str | None:
  """Writes sampling.num_samples EMA samples of a checkpoint as a PNG grid and an .npz; returns the PNG path.

  Returns None on processes other than 0, which sample but write nothing.
  """
  run = open_trained_run(config, workdir, allow_config_change)
  state = run.restore(checkpoint_step)
  step, s, sampler = int(state.step), config.sampling, run.components.sampler
  batches = sampler.batches(state.ema_params, lambda i: keys.sample_key(state.rng, step, i), s.num_samples,
                            s.batch_size)
  batches = [np.asarray(b) for b in progress.timed_batches(batches, -(-s.num_samples // s.batch_size),
                                                           f'Sampling {s.num_samples} images ({sampler.name})')]
  name = f'sample_step_{step}_{sampler.name}'
  if jax.process_index() != 0:  # every process samples (the params span them all); process 0 writes
    return None
  samples_dir = paths.Workdir(workdir).samples
  path, images_uint8 = images.save_samples(samples_dir, name, np.concatenate(batches))
  np.savez_compressed(os.path.join(samples_dir, f'{name}.npz'), images=images_uint8)
  logging.info('Wrote %s and %s.npz', path, name)
  print(f'Wrote {len(images_uint8)} samples of step {step}: {path} and {name}.npz')
  return path


def evaluate(config: schema.Config, workdir: str, checkpoint_step: int | None = None,
             allow_config_change: bool = False) -> dict:
  """Evaluates one checkpoint, or every checkpoint of workdir; returns {step: metrics}.

  With eval.phema_sigma_rels, the post-hoc EMA of each at each step instead: {(step, sigma_rel): metrics}.
  """
  run = open_trained_run(config, workdir, allow_config_change)
  if config.eval.protocol == 'paper' and jax.default_backend() == 'cpu':
    logging.warning('The paper protocol samples %d images over all steps: without a GPU (JAX sees only the CPU) '
                    'that takes days.', config.eval.paper_num_samples)
  from ddpm_jax.evaluation import scores  # pylint: disable=g-import-not-at-top  # loads torch
  evaluation = scores.make_evaluation(config, run.components, force=True)
  if config.eval.phema_sigma_rels:  # the post-hoc EMA sweep: reconstructions in place of the EMA params
    from ddpm_jax.evaluation import phema_sweep  # pylint: disable=g-import-not-at-top
    return phema_sweep.evaluate(config, workdir, evaluation, run.components.mesh, run.steps(), checkpoint_step)
  steps = [checkpoint_step] if checkpoint_step is not None else run.steps()
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {run.manager.directory} to evaluate')
  results = {}
  for step in steps:
    results[step] = evaluation.evaluate_and_write(run.restore(step), workdir, step)
    print(evaluation.summary(step, results[step]))
  return results
