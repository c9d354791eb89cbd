"""diffusers' scheduler configs and our diffusion and sampling settings, both ways.

A DDPMScheduler (or DDIMScheduler, ...) config names its betas (beta_schedule with beta_start and
beta_end, or trained_betas), the prediction type and the DDPM variance. Imported betas become the
named schedule they equal, else `diffusion.schedule='trained'` with the betas themselves; exported
schedules that diffusers lacks go out as trained_betas.
"""
import math

import numpy as np

from ddpm_jax.core import schedules

# DDPMScheduler's constructor defaults (diffusers 0.30-0.42): a scheduler_config.json omits the keys left at them.
SCHEDULER_DEFAULTS = {
    'num_train_timesteps': 1000, 'beta_start': 0.0001, 'beta_end': 0.02, 'beta_schedule': 'linear',
    'trained_betas': None, 'variance_type': 'fixed_small', 'clip_sample': True, 'prediction_type': 'epsilon',
    'thresholding': False, 'clip_sample_range': 1.0, 'rescale_betas_zero_snr': False,
}
PREDICTIONS = {'epsilon': 'eps', 'sample': 'x0', 'v_prediction': 'v'}
VARIANCES = {'fixed_small': 'beta_tilde', 'fixed_small_log': 'beta_tilde', 'fixed_large': 'beta',
             'fixed_large_log': 'beta'}
# Our schedules that diffusers names, with how it names them.
_NAMED = ('linear', 'cosine', 'sigmoid')


def _refuse(key: str, value, why: str) -> ValueError:
  return ValueError(f'diffusers scheduler config {key}={value!r}: {why}')


def _cosine_betas(num_timesteps: int) -> np.ndarray:
  """Returns diffusers' squaredcos_cap_v2 betas (betas_for_alpha_bar, max_beta 0.999)."""
  alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                   for i in range(num_timesteps)], np.float64)


def betas_of(scheduler: dict) -> np.ndarray:
  """Returns the float64 betas that a diffusers scheduler config (defaults filled in) describes."""
  steps, start, end = int(scheduler['num_train_timesteps']), scheduler['beta_start'], scheduler['beta_end']
  if scheduler['trained_betas'] is not None:
    betas = np.asarray(scheduler['trained_betas'], np.float64)
    if betas.shape != (steps,):
      raise _refuse('trained_betas', f'<{betas.size} values>', f'needs num_train_timesteps={steps} values')
    return betas
  name = scheduler['beta_schedule']
  if name == 'linear':
    return np.linspace(start, end, steps, dtype=np.float64)
  if name == 'scaled_linear':
    return np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
  if name == 'squaredcos_cap_v2':
    return _cosine_betas(steps)
  if name == 'sigmoid':
    return 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, steps))) * (end - start) + start
  raise _refuse('beta_schedule', name, 'valid: linear, scaled_linear, squaredcos_cap_v2, sigmoid, or trained_betas')


def schedule_name(betas: np.ndarray) -> str | None:
  """Returns the name of our schedule whose betas these are (to float32 precision), or None."""
  for name in _NAMED:
    try:
      ours = np.asarray(schedules.make_schedule(name, len(betas)).betas, np.float64)
    except ValueError:  # e.g. our linear, rescaled by 1000 / T, has no T=20
      continue
    if np.allclose(ours, betas, rtol=1e-6, atol=1e-9):
      return name
  return None


def settings_from_scheduler(source: dict | None) -> dict:
  """Returns {'section.key': value} of our diffusion and sampling settings for a diffusers scheduler config."""
  scheduler = {**SCHEDULER_DEFAULTS, **{k: v for k, v in (source or {}).items() if not k.startswith('_')}}
  for key, valid in (('prediction_type', PREDICTIONS), ('variance_type', VARIANCES)):
    if scheduler[key] not in valid:
      raise _refuse(key, scheduler[key], f'valid: {", ".join(valid)}')
  if scheduler['thresholding']:
    raise _refuse('thresholding', True, 'dynamic thresholding is not supported; only clip_sample')
  if scheduler['clip_sample'] and scheduler['clip_sample_range'] != 1.0:
    raise _refuse('clip_sample_range', scheduler['clip_sample_range'], 'only 1.0 (clipping x0 to [-1, 1])')
  betas = betas_of(scheduler)
  name = schedule_name(betas)
  settings = {
      'diffusion.schedule': name or 'trained',
      'diffusion.trained_betas': () if name else tuple(float(b) for b in betas),
      'diffusion.num_timesteps': len(betas),
      'diffusion.zero_terminal_snr': bool(scheduler['rescale_betas_zero_snr']),
      'diffusion.prediction': PREDICTIONS[scheduler['prediction_type']],
      'sampling.variance': VARIANCES[scheduler['variance_type']],
      'sampling.clip_denoised': bool(scheduler['clip_sample']),
      'sampling.num_steps': len(betas),
  }
  return settings


def scheduler_from_settings(config) -> dict:
  """Returns the DDPMScheduler config dict of a run's diffusion and sampling settings."""
  d, num_timesteps = config.diffusion, config.diffusion.num_timesteps
  scheduler = {
      '_class_name': 'DDPMScheduler', 'num_train_timesteps': num_timesteps,
      'variance_type': 'fixed_small' if config.sampling.variance == 'beta_tilde' else 'fixed_large',
      'clip_sample': bool(config.sampling.clip_denoised), 'clip_sample_range': 1.0,
      'prediction_type': {ours: theirs for theirs, ours in PREDICTIONS.items()}[d.prediction],
      'thresholding': False, 'timestep_spacing': 'leading',
      'rescale_betas_zero_snr': bool(d.zero_terminal_snr),
      'beta_start': 0.0001, 'beta_end': 0.02, 'beta_schedule': 'linear', 'trained_betas': None,
  }
  if d.schedule == 'linear' and not d.logsnr_shift:  # ours rescales by 1000 / T, so any T spans the same noise
    scheduler.update(beta_start=1e-4 * 1000 / num_timesteps, beta_end=0.02 * 1000 / num_timesteps)
  elif d.schedule == 'cosine' and not d.logsnr_shift:
    scheduler.update(beta_schedule='squaredcos_cap_v2')
  else:
    # The betas (log-SNR shifted, as trained) before any zero-terminal-SNR rescaling, which diffusers applies itself.
    betas = np.asarray(schedules.make_schedule(d.schedule, num_timesteps).betas, np.float64) \
        if d.schedule != 'trained' else np.asarray(d.trained_betas, np.float64)
    if d.logsnr_shift:
      betas = schedules.shift_logsnr(betas, d.logsnr_shift)
    scheduler.update(trained_betas=[float(b) for b in betas])
  return scheduler
