"""Start-up checks across keys of a typed Config: each mistake becomes one line naming the keys, values and fix.

Each key's own type, choices and range were checked when the Config was made (config/convert.py);
these are the rules that tie keys together, or to the machine (devices, backend, installed packages).
"""
import importlib.util

import jax

from ddpm_jax import data
from ddpm_jax.config import schema
from ddpm_jax.core import sampler, schedules, sharding, timesteps


def check_sampler(key: str, settings, schedule: schedules.Schedule) -> None:
  """Raises ValueError when a sampler section's grid doesn't fit the schedule (steps vs T, zero terminal SNR)."""
  try:
    timesteps.sampling_grid(schedule, settings.sampler, settings.num_steps, settings.timestep_spacing)
  except ValueError as e:
    raise ValueError(f'{key}.num_steps={settings.num_steps} with {key}.sampler={settings.sampler!r}, '
                     f'{key}.timestep_spacing={settings.timestep_spacing!r} and diffusion.num_timesteps='
                     f'{schedule.num_timesteps}: {e}') from None


def check_diffusion(config: schema.Config) -> None:
  """Raises ValueError for a schedule that can't be built, or a prediction it can't train."""
  d = config.diffusion
  try:
    schedule = d.build_schedule()
  except ValueError as e:
    raise ValueError(f'diffusion.schedule={d.schedule!r} / diffusion.num_timesteps={d.num_timesteps}: {e}') from None
  if d.zero_terminal_snr and d.prediction == 'eps':  # x0 = (x_T - eps) / sqrt(alpha_bar_T) divides by 0
    raise ValueError("diffusion.zero_terminal_snr=True with diffusion.prediction='eps': at alpha_bar_T = 0 the "
                     "noise carries no information about the image; use diffusion.prediction='v' or 'x0'")
  check_sampler('sampling', config.sampling, schedule)
  check_sampler('eval.sampling', config.eval.sampling, schedule)


def check_batch(config: schema.Config, device_count: int | None = None) -> None:
  """Raises ValueError when the batch does not split over processes, devices and grad_accum_steps microbatches."""
  t, devices = config.training, device_count or jax.device_count()
  sharding.check_batch_size(t.batch_size, devices, jax.process_count())
  k = t.grad_accum_steps
  if t.batch_size % k:
    raise ValueError(f'training.batch_size={t.batch_size} is not divisible by training.grad_accum_steps={k}; '
                     f'use a batch size that is a multiple of {k}')
  if (t.batch_size // k) % devices:
    raise ValueError(f'training.batch_size={t.batch_size} / training.grad_accum_steps={k} = {t.batch_size // k} '
                     f'rows per microbatch is not divisible by the {devices} devices; use a grad_accum_steps '
                     f'that leaves a multiple of {devices} rows')


def check_model(config: schema.Config) -> None:
  """Raises ValueError when the U-Net does not fit the image size or asks for a backend this machine lacks."""
  try:
    config.model.validate(config.data.image_size)
  except ValueError as e:
    raise ValueError(f'model / data.image_size={config.data.image_size}: {e}') from None
  if config.model.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError(f"model.attention_impl='cudnn' needs an NVIDIA GPU (this run's backend is "
                     f"{jax.default_backend()}); use None (the default: cuDNN where it applies) or 'xla'.")


def check_logging(config: schema.Config) -> None:
  """Raises ValueError for logging.wandb=True without the wandb package."""
  # find_spec looks for the package without importing it (seconds that only a wandb run should pay).
  if config.logging.wandb and importlib.util.find_spec('wandb') is None:
    raise ValueError("logging.wandb=True needs the wandb package, which is not installed: pip install -e '.[wandb]'")


def check_phema(config: schema.Config) -> None:
  """Raises ValueError for a post-hoc EMA profile given twice, or a sweep of a run that tracks no profiles."""
  tracked, swept = config.training.phema_sigma_rels, config.eval.phema_sigma_rels
  if len(set(tracked)) != len(tracked):
    raise ValueError(f'training.phema_sigma_rels={tracked!r} names a profile twice; give each sigma_rel once')
  if swept and not tracked:
    raise ValueError(f'eval.phema_sigma_rels={swept!r} needs a run that tracked post-hoc EMA profiles, but '
                     'training.phema_sigma_rels=() (its snapshots are what the sweep reconstructs from); train with '
                     'e.g. --config.training.phema_sigma_rels="(0.05, 0.1)"')


def check_guidance(config: schema.Config) -> None:
  """Raises ValueError for a bad guidance interval, guidance or labels on an unconditional model, or a bad class id.

  training.label_dropout is not among them: an unconditional model's batches carry no labels, so
  its dropout (0.1 by default) has nothing to drop and is ignored. Class names in sampling.labels
  are checked when the dataset's names are known (`sampler.resolve_labels`).
  """
  s, e, num_classes = config.sampling, config.eval, config.model.num_classes
  for prefix, scale, interval in (('sampling', s.guidance_scale, s.guidance_interval),
                                  ('eval', e.guidance_scale, e.guidance_interval)):
    sampler.Guidance(scale, tuple(interval)).check(config.diffusion.num_timesteps, prefix)
  if not num_classes:
    asked = [f'{key}={value!r}' for key, value, default in (
        ('sampling.guidance_scale', s.guidance_scale, 1.0), ('sampling.guidance_interval', s.guidance_interval, ()),
        ('sampling.labels', s.labels, ()), ('eval.guidance_scale', e.guidance_scale, 1.0),
        ('eval.guidance_interval', e.guidance_interval, ()), ('eval.guidance_scales', e.guidance_scales, ()))
        if value != default]
    if asked:
      raise ValueError(f'{asked[0]} needs a class-conditional model, but model.num_classes=0 (unconditional); set '
                       "model.num_classes to the dataset's class count, or leave the key at its default")
    return
  for label in s.labels:
    if not isinstance(label, str) and not 0 <= label < num_classes:
      raise ValueError(f'sampling.labels={tuple(s.labels)!r}: class {label} is out of range for model.num_classes='
                       f'{num_classes}; valid: ids 0..{num_classes - 1} or class names')


def validate_config(config: schema.Config) -> None:
  """Raises ValueError with a one-line message at the first rule across keys that the config breaks."""
  check_diffusion(config)
  check_guidance(config)
  check_batch(config)
  check_model(config)
  check_logging(config)
  check_phema(config)
  data.validate_data_config(config.data)
