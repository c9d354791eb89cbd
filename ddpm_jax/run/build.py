"""What a run is built from, for every mode: the model, schedule, optimizer, jitted step and sampler; the state."""
import dataclasses

import jax

from ddpm_jax.config import schema
from ddpm_jax.core import keys, loss_scale, sampler, schedules, sharding, train_step
from ddpm_jax.core.models.unet import UNet


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


def objective(config: schema.Config) -> train_step.Objective:
  """Returns what the train step optimises: the diffusion section's loss and the training section's EMA and microbatches."""
  d, t = config.diffusion, config.training
  return train_step.Objective(loss=d.loss, prediction=d.prediction, loss_weighting=d.loss_weighting,
                              min_snr_gamma=d.min_snr_gamma, huber_delta=d.huber_delta, offset_noise=d.offset_noise,
                              ema_decay=t.ema_decay, ema_warmup=t.ema_warmup, grad_accum_steps=t.grad_accum_steps,
                              phema_sigma_rels=tuple(t.phema_sigma_rels), label_dropout=t.label_dropout,
                              null_label=config.model.num_classes)


def build(config: schema.Config) -> Components:
  """Returns the model, schedule, optimizer, jitted train step and sampler the config describes."""
  model = UNet(config.model)
  schedule = config.diffusion.build_schedule()
  t = config.training
  optimizer = train_step.make_optimizer(t.learning_rate, t.warmup_steps, t.grad_clip)
  mesh = sharding.make_mesh()
  batch_sharding = sharding.batch_sharded(mesh)
  if config.data.on_device:
    step_fn = train_step.make_device_data_train_step(model.apply, schedule, optimizer, objective(config),
                                                     batch_size=t.batch_size, flip=config.data.random_flip,
                                                     batch_sharding=batch_sharding)
  else:
    step_fn = train_step.make_train_step(model.apply, schedule, optimizer, objective(config),
                                         batch_sharding=batch_sharding)
  grid_sampler = make_sampler(config, model, schedule, mesh, config.sampling, sampling_guidance(config))
  learning_rate = train_step.learning_rate_schedule(t.learning_rate, t.warmup_steps)
  return Components(model, mesh, schedule, optimizer, learning_rate, step_fn, grid_sampler)


def sampling_guidance(config: schema.Config) -> sampler.Guidance:
  """Returns config.sampling's classifier-free guidance (grids, --mode=sample); none for an unconditional model."""
  s = config.sampling
  return guidance_of(config, s.guidance_scale, s.guidance_interval)


def eval_guidance(config: schema.Config, scale: float | None = None) -> sampler.Guidance:
  """Returns the evaluation's guidance: eval.guidance_scale (or `scale`, one w of a sweep), eval.guidance_interval."""
  e = config.eval
  return guidance_of(config, e.guidance_scale if scale is None else scale, e.guidance_interval)


def guidance_of(config: schema.Config, scale: float, interval) -> sampler.Guidance:
  """Returns Guidance(scale, interval) for a class-conditional model; the plain sampler's for an unconditional one."""
  if not config.model.num_classes:  # the checks refuse guidance there; the sampler stays today's
    return sampler.Guidance()
  return sampler.Guidance(float(scale), tuple(interval))


def make_sampler(config: schema.Config, model: UNet, schedule, mesh, settings,
                 guidance: sampler.Guidance = sampler.Guidance()) -> sampler.Sampler:
  """Returns the sampler of the model with the given settings (config.sampling, or an evaluation's) and guidance."""
  return sampler.make_sampler(model.apply, schedule, settings, prediction=config.diffusion.prediction,
                              image_size=config.data.image_size, mesh=mesh, guidance=guidance,
                              null_label=config.model.num_classes)


def initial_state(config: schema.Config, components: Components) -> train_step.TrainState:
  """Returns the freshly initialised train state of the config's seed."""
  params = train_step.init_params(components.model, config.data.image_size, config.seed)
  # Only float16 compute scales the loss: other runs' states (and checkpoints) have no loss scale.
  scale = loss_scale.init() if config.model.dtype == 'float16' else None
  # Only runs with post-hoc EMA profiles track them: others' states (and checkpoints) have none.
  state = train_step.create_train_state(params, components.optimizer, keys.base_key(config.seed), scale,
                                        phema_profiles=len(config.training.phema_sigma_rels))
  return sharding.replicate(state, components.mesh)


def abstract_state(config: schema.Config, components: Components):
  """Returns the shapes, dtypes and shardings of the train state, without computing it."""
  return sharding.abstract_replicated(jax.eval_shape(lambda: initial_state(config, components)), components.mesh)
