"""What a run is built from, for every mode: the model, schedule, optimizer, jitted step and sampler; the state."""
import dataclasses

import jax
import ml_collections
import numpy as np

from ddpm_jax.core import keys, loss_scale, sampler, schedules, sharding, train_step
from ddpm_jax.core.models.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class Components:
  """What a run is built from: the model, its schedule and optimizer, and the jitted functions."""
  model: UNet
  mesh: object
  schedule: schedules.Schedule
  optimizer: object
  learning_rate: object
  step_fn: object
  sampler: sampler.Sampler  # config.sampling's: the grids and --mode=sample


def build(config: ml_collections.ConfigDict) -> Components:
  """Returns the model, schedule, optimizer, jitted train step and sampler the config describes."""
  model = UNet(UNetConfig(**config.model))
  schedule = make_schedule(config.diffusion)
  t = config.training
  optimizer = train_step.make_optimizer(t.learning_rate, t.warmup_steps, t.grad_clip)
  mesh = sharding.make_mesh()
  objective = dict(loss=config.diffusion.loss, prediction=config.diffusion.prediction, ema_decay=t.ema_decay,
                   ema_warmup=t.ema_warmup, grad_accum_steps=t.grad_accum_steps,
                   offset_noise=config.diffusion.offset_noise, loss_weighting=config.diffusion.loss_weighting,
                   min_snr_gamma=config.diffusion.min_snr_gamma)
  if config.data.on_device:
    step_fn = train_step.make_device_data_train_step(
        model.apply, schedule, optimizer, **objective, batch_size=t.batch_size, flip=config.data.random_flip,
        batch_sharding=sharding.batch_sharded(mesh))
  else:
    step_fn = train_step.make_train_step(model.apply, schedule, optimizer, **objective,
                                         batch_sharding=sharding.batch_sharded(mesh))
  grid_sampler = make_sampler(config, model, schedule, mesh, config.sampling)
  learning_rate = train_step.learning_rate_schedule(t.learning_rate, t.warmup_steps)
  return Components(model, mesh, schedule, optimizer, learning_rate, step_fn, grid_sampler)


def make_schedule(diffusion: ml_collections.ConfigDict) -> schedules.Schedule:
  """Returns the config's noise schedule: a named one, or schedule='trained''s own betas (what imports set)."""
  if diffusion.schedule != 'trained':
    return schedules.make_schedule(diffusion.schedule, diffusion.num_timesteps,
                                   zero_terminal_snr=diffusion.zero_terminal_snr)
  betas = np.asarray(diffusion.trained_betas, np.float64)
  if betas.shape != (diffusion.num_timesteps,):
    raise ValueError(f"diffusion.schedule='trained' needs diffusion.trained_betas of diffusion.num_timesteps="
                     f"{diffusion.num_timesteps} values; it has {betas.size}")
  return schedules.schedule_from_betas(schedules.rescale_zero_terminal_snr(betas) if diffusion.zero_terminal_snr
                                       else betas)


def make_sampler(config: ml_collections.ConfigDict, model: UNet, schedule, mesh, section) -> sampler.Sampler:
  """Returns the sampler of the model that a config section (config.sampling, or evaluation's) describes."""
  return sampler.make_sampler(model.apply, schedule, section, prediction=config.diffusion.prediction,
                              image_size=config.data.image_size, mesh=mesh)


def initial_state(config: ml_collections.ConfigDict, components: Components) -> train_step.TrainState:
  """Returns the freshly initialised train state of the config's seed."""
  params = train_step.init_params(components.model, config.data.image_size, config.seed)
  # Only float16 compute scales the loss: other runs' states (and checkpoints) have no loss scale.
  scale = loss_scale.init() if config.model.dtype == 'float16' else None
  state = train_step.create_train_state(params, components.optimizer, keys.base_key(config.seed), scale)
  return sharding.replicate(state, components.mesh)


def abstract_state(config: ml_collections.ConfigDict, components: Components):
  """Returns the shapes, dtypes and shardings of the train state, without computing it."""
  return sharding.abstract_replicated(jax.eval_shape(lambda: initial_state(config, components)), components.mesh)


def make_evaluation(config: ml_collections.ConfigDict, components: Components, force: bool = False):
  """Returns the run's Evaluation when eval.every_steps > 0 (or force), else None; checks Inception first."""
  if not (config.eval.every_steps or force):
    return None
  # The one import of evaluation: it loads torch, which only evaluating needs.
  from ddpm_jax import evaluation  # pylint: disable=g-import-not-at-top
  evaluation.check_setup(config, force=force)
  return evaluation.Evaluation(config, components, progress=force)  # force: --mode=eval, which shows progress
