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
from ddpm_jax.core import sampler as sampler_lib
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

  A class-conditional model draws sampling.labels (balanced by default), which the .npz holds beside the images.
  Returns None on processes other than 0, which sample but write nothing.
  """
  run = open_trained_run(config, workdir, allow_config_change)
  labels = sample_labels(config, workdir)  # a bad class name or id: one line, before restoring anything
  state = run.restore(checkpoint_step)
  step, s, sampler = int(state.step), config.sampling, run.components.sampler
  batches = sampler.batches(state.ema_params, lambda i: keys.sample_key(state.rng, step, i), s.num_samples,
                            s.batch_size, labels)
  batches = [np.asarray(b) for b in progress.timed_batches(batches, -(-s.num_samples // s.batch_size),
                                                           f'Sampling {s.num_samples} images ({sampler.name})')]
  name = f'sample_step_{step}_{sampler.name}'
  if jax.process_index() != 0:  # every process samples (the params span them all); process 0 writes
    return None
  samples_dir = paths.Workdir(workdir).samples
  path, images_uint8, _ = images.save_samples(samples_dir, name, np.concatenate(batches))
  arrays = {'images': images_uint8} if labels is None else {'images': images_uint8, 'labels': labels}
  np.savez_compressed(os.path.join(samples_dir, f'{name}.npz'), **arrays)
  logging.info('Wrote %s and %s.npz', path, name)
  classes = '' if labels is None else f' of {len(np.unique(labels))} classes'
  print(f'Wrote {len(images_uint8)} samples{classes} of step {step}: {path} and {name}.npz')
  return path


def sample_labels(config: schema.Config, workdir: str) -> np.ndarray | None:
  """Returns the class of each of sampling.num_samples samples (int32), from sampling.labels; None if unconditional.

  Class names are looked up in the workdir's classes.json.
  """
  if not config.model.num_classes:
    return None
  return sampler_lib.resolve_labels(config.sampling.labels, workdir_lib.read_class_names(workdir),
                                    config.model.num_classes, config.sampling.num_samples)


def evaluate(config: schema.Config, workdir: str, checkpoint_step: int | None = None,
             allow_config_change: bool = False) -> dict:
  """Evaluates one checkpoint, or every checkpoint of workdir; returns {step: metrics}.

  With eval.phema_sigma_rels, the post-hoc EMA of each at each step instead: {(step, sigma_rel): metrics};
  with eval.guidance_scales, each guidance w at each step: {(step, w): metrics}.
  """
  if config.eval.phema_sigma_rels and config.eval.guidance_scales:
    raise ValueError(f'eval.phema_sigma_rels={tuple(config.eval.phema_sigma_rels)} and eval.guidance_scales='
                     f'{tuple(config.eval.guidance_scales)} are two sweeps; run --mode=eval once for each')
  run = open_trained_run(config, workdir, allow_config_change)
  if config.eval.protocol == 'paper' and jax.default_backend() == 'cpu':
    logging.warning('The paper protocol samples %d images over all steps: without a GPU (JAX sees only the CPU) '
                    'that takes days.', config.eval.paper_num_samples)
  from ddpm_jax.evaluation import scores  # pylint: disable=g-import-not-at-top  # loads torch
  evaluation = scores.make_evaluation(config, run.components, force=True)
  if config.eval.phema_sigma_rels:  # the post-hoc EMA sweep: reconstructions in place of the EMA params
    from ddpm_jax.evaluation import phema_sweep  # pylint: disable=g-import-not-at-top
    return phema_sweep.evaluate(config, workdir, evaluation, run.components.mesh, run.steps(), checkpoint_step)
  if config.eval.guidance_scales:  # the guidance sweep: the EMA params at each w
    from ddpm_jax.evaluation import guidance_sweep  # pylint: disable=g-import-not-at-top
    return guidance_sweep.evaluate(config, workdir, evaluation, run, checkpoint_step)
  steps = [checkpoint_step] if checkpoint_step is not None else run.steps()
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {run.manager.directory} to evaluate')
  results = {}
  for step in steps:
    results[step] = evaluation.evaluate_and_write(run.restore(step), workdir, step)
    print(evaluation.summary(step, results[step]))
  return results
