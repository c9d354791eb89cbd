"""Start-up checks of a config: every user mistake becomes one line naming the key, the value and the fix."""
import importlib.util

import jax
import ml_collections

from ddpm_jax import components, data, eval_protocol
from ddpm_jax.core import diffusion, sharding
from ddpm_jax.core.models.unet import UNetConfig
from eval_bridge import metrics  # the registry alone: no torch, so checking a config stays fast


def _positive_int(name: str, value, allow_zero: bool = False) -> None:
  low = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f'{name}={value!r} must be an integer >= {low}')


def _check_sampling(prefix: str, num_timesteps: int, sampler: str, num_steps, spacing: str) -> None:
  diffusion.check_choice(f'{prefix}sampler', sampler, diffusion.SAMPLERS)
  diffusion.check_choice(f'{prefix}timestep_spacing', spacing, diffusion.TIMESTEP_SPACINGS)
  try:
    diffusion.sampling_timesteps(num_timesteps, sampler, num_steps, spacing)
  except ValueError as e:
    raise ValueError(f'{prefix}num_steps: {e}') from None


def check_diffusion(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a bad schedule, loss, prediction, sampler, variance or step count."""
  d = config.diffusion
  try:
    components.make_schedule(d)
  except ValueError as e:
    raise ValueError(f'diffusion.schedule / diffusion.num_timesteps: {e}') from None
  diffusion.check_choice('diffusion.loss', d.loss, diffusion.LOSSES)
  diffusion.check_choice('diffusion.prediction', d.prediction, diffusion.PREDICTIONS)
  if d.zero_terminal_snr and d.prediction == 'eps':  # x0 = (x_T - eps) / sqrt(alpha_bar_T) divides by 0
    raise ValueError("diffusion.zero_terminal_snr=True with diffusion.prediction='eps': at alpha_bar_T = 0 the "
                     "noise carries no information about the image; use diffusion.prediction='v' or 'x0'")
  diffusion.check_choice('sampling.variance', config.sampling.variance, diffusion.VARIANCES)
  _check_sampling('sampling.', d.num_timesteps, config.sampling.sampler, config.sampling.num_steps,
                  config.sampling.timestep_spacing)
  if config.eval.every_steps:
    _check_sampling('eval.', d.num_timesteps, config.eval.sampler, config.eval.sampling_steps,
                    config.eval.timestep_spacing)
  diffusion.check_choice('diffusion.loss_weighting', d.loss_weighting, diffusion.LOSS_WEIGHTINGS)
  gamma = d.min_snr_gamma
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float('inf'):
    raise ValueError(f'diffusion.min_snr_gamma={gamma!r} must be a finite number > 0 (5.0 is Hang et al.\'s)')


def check_metrics(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown name in eval.metrics, or none (checked even with evaluation off: --mode=eval)."""
  names = config.eval.metrics
  try:
    metrics.select(names)
  except ValueError as e:
    comma = next((name for name in names if ',' in name), None)
    hint = f' (a tuple on the command line: --config.eval.metrics="{tuple(comma.split(","))}")' if comma else ''
    raise ValueError(f'eval.metrics: {e}{hint}') from None


def check_training(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a non-positive period, batch or step count, or a bad EMA decay."""
  t = config.training
  for key in ('batch_size', 'num_steps', 'log_every_steps', 'checkpoint_every_steps', 'sample_every_steps',
              'keep_checkpoints', 'num_grid_samples', 'max_nonfinite_steps'):
    _positive_int(f'training.{key}', t[key])
  _positive_int('training.warmup_steps', t.warmup_steps, allow_zero=True)
  _positive_int('eval.every_steps', config.eval.every_steps, allow_zero=True)
  for key in ('num_samples', 'batch_size'):
    _positive_int(f'sampling.{key}', config.sampling[key])
  if not 0.0 <= t.ema_decay < 1.0:
    raise ValueError(f'training.ema_decay={t.ema_decay!r} must lie in [0, 1)')
  if not t.learning_rate > 0:
    raise ValueError(f'training.learning_rate={t.learning_rate!r} must be > 0')
  sharding.check_batch_size(t.batch_size, jax.device_count(), jax.process_count())


def check_step_options(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
  """Raises ValueError for a grad_accum_steps that does not fit the batch and devices, or a bad offset_noise."""
  t, devices = config.training, device_count or jax.device_count()
  k = t.grad_accum_steps
  _positive_int('training.grad_accum_steps', k)
  if t.batch_size % k:
    raise ValueError(f'training.batch_size={t.batch_size} is not divisible by training.grad_accum_steps={k}; '
                     f'use a batch size that is a multiple of {k}')
  if (t.batch_size // k) % devices:
    raise ValueError(f'training.batch_size={t.batch_size} / training.grad_accum_steps={k} = {t.batch_size // k} '
                     f'rows per microbatch is not divisible by the {devices} devices; use a grad_accum_steps '
                     f'that leaves a multiple of {devices} rows')
  offset = config.diffusion.offset_noise
  if not 0.0 <= offset < float('inf'):  # NaN fails too
    raise ValueError(f'diffusion.offset_noise={offset!r} must be a finite number >= 0 (0 = off; 0.1 is common)')


WANDB_MODES = ('', 'online', 'offline', 'disabled')  # '' = wandb's own choice: $WANDB_MODE, else online


def check_logging(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown logging.wandb_mode, or logging.wandb=True without the wandb package."""
  lg = config.logging
  if lg.wandb_mode not in WANDB_MODES:
    raise ValueError(f'logging.wandb_mode={lg.wandb_mode!r} must be one of {WANDB_MODES}')
  # find_spec looks for the package without importing it (seconds that only a wandb run should pay).
  if lg.wandb and importlib.util.find_spec('wandb') is None:
    raise ValueError("logging.wandb=True needs the wandb package, which is not installed: pip install -e '.[wandb]'")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message at the first invalid setting of config."""
  check_diffusion(config)
  check_training(config)
  check_step_options(config)
  check_metrics(config)
  eval_protocol.check(config)
  check_logging(config)
  model_config = UNetConfig(**config.model)
  try:
    model_config.validate(config.data.image_size)
  except ValueError as e:
    raise ValueError(f'model / data.image_size: {e}') from None
  if model_config.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError(f"model.attention_impl='cudnn' needs an NVIDIA GPU (this run's backend is "
                     f"{jax.default_backend()}); use None (the default: cuDNN where it applies) or 'xla'.")
  data.validate_data_config(config.data, config.training.batch_size, jax.process_count())
