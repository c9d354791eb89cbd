"""The diffusion math: forward noising, training losses, DDPM, DDIM and DPM-Solver++(2M) steps, the sampler.

The updates shared with the noise-level grids (and heun) live in `solvers`, the grids in `timesteps`.

Pure: imports only jax and numpy. Every function takes the Schedule explicitly and
draws no randomness of its own; noise and keys come in as arguments.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax.core import solvers, timesteps
from ddpm_jax.core.schedules import Schedule
from ddpm_jax.core.solvers import PREDICTIONS
# The reverse process's timestep grids live in `timesteps`; these names stay here for the callers of old.
from ddpm_jax.core.timesteps import (SAMPLERS, TIMESTEP_SPACINGS, check_choice, ddim_timesteps,  # noqa: F401
                                     dpm_solver_timesteps, sampling_timesteps)

LOSSES = ('mse', 'mae', 'huber')
VARIANCES = ('beta_tilde', 'beta')
LOSS_WEIGHTINGS = ('none', 'min_snr', 'edm')
EDM_SIGMA_DATA = 0.5  # Karras et al. (2022)'s sigma_data for images in [-1, 1]


def broadcast_to_rank(values: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """Returns values with trailing unit axes added up to rank ndim."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def extract(coefs: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """Returns coefs[t] shaped to broadcast against a batch of rank ndim."""
  return broadcast_to_rank(coefs[jnp.asarray(t, jnp.int32)], ndim)


def q_sample(schedule: Schedule, x0, t, noise):
  """Returns x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def _signal_noise(schedule, t, ndim, alpha_bar=None):
  """Returns (sqrt(alpha_bar), sqrt(1 - alpha_bar)) at t, or at the given alpha_bar."""
  if alpha_bar is None:
    return (extract(schedule.sqrt_alphas_cumprod, t, ndim),
            extract(schedule.sqrt_one_minus_alphas_cumprod, t, ndim))
  return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def to_x0(schedule, model_output, x_t, t, prediction):
  """Returns the x0 that a model output of the given prediction type implies."""
  return solvers.x0_from(model_output, x_t, *_signal_noise(schedule, t, x_t.ndim), prediction)


def eps_from_x0(schedule, x0, x_t, t):
  """Returns the noise that takes x0 to x_t at timestep t."""
  a, s = _signal_noise(schedule, t, x_t.ndim)
  return (x_t - a * x0) / s


def v_from(schedule, x0, noise, t):
  """Returns the velocity v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022)."""
  a, s = _signal_noise(schedule, t, x0.ndim)
  return a * noise - s * x0


def from_x0_eps(schedule, x0, noise, t, prediction):
  """Returns what a model of the given prediction type should output for (x0, noise) at t."""
  if prediction == 'eps':
    return noise
  if prediction == 'x0':
    return x0
  if prediction == 'v':
    return v_from(schedule, x0, noise, t)
  raise ValueError(f'unknown prediction {prediction!r}; valid: {", ".join(PREDICTIONS)}')


def elementwise_loss(output, target, loss, huber_delta=1.0):
  """Returns the per-element loss between output and target."""
  diff = output - target
  if loss == 'mse':
    return jnp.square(diff)
  if loss == 'mae':
    return jnp.abs(diff)
  if loss == 'huber':
    abs_diff = jnp.abs(diff)
    quadratic = jnp.minimum(abs_diff, huber_delta)
    return 0.5 * jnp.square(quadratic) + huber_delta * (abs_diff - quadratic)
  raise ValueError(f'unknown loss {loss!r}; valid: {", ".join(LOSSES)}')


def signal_to_noise(schedule: Schedule, t) -> jnp.ndarray:
  """Returns SNR_t = alpha_bar_t / (1 - alpha_bar_t) at each t, from the schedule's float64-derived square roots."""
  return jnp.square(schedule.sqrt_alphas_cumprod[t] / schedule.sqrt_one_minus_alphas_cumprod[t])


def min_snr_weights(schedule: Schedule, t, prediction, gamma=5.0) -> jnp.ndarray:
  """Returns Min-SNR-gamma's per-example loss weights (Hang et al. 2023) for a model of the given prediction type.

  Each equals min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v.
  """
  snr = signal_to_noise(schedule, t)
  if prediction == 'eps':
    return jnp.minimum(1.0, gamma / snr)  # min(SNR, gamma) / SNR, but 1 rather than 0/0 where SNR = 0
  if prediction == 'x0':
    return jnp.minimum(snr, gamma)
  if prediction == 'v':
    return jnp.minimum(snr, gamma) / (snr + 1.0)
  raise ValueError(f'unknown prediction {prediction!r}; valid: {", ".join(PREDICTIONS)}')


def edm_weights(schedule: Schedule, t, prediction) -> jnp.ndarray:
  """Returns EDM's per-example loss weights (Karras et al. 2022, sigma_data = 0.5) for a model of the prediction type.

  EDM weights the x0 error by lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 at noise level
  sigma^2 = 1 / SNR, so its preconditioned network's target has unit variance at every level: in x0
  units SNR + 1 / sigma_data^2 = SNR + 4, divided here by each prediction's own x0 factor (eps: SNR,
  v: SNR + 1), so eps, x0 and v train the same objective (eps's weight explodes as SNR -> 0: use v or
  x0). Uniform timesteps, not EDM's log-normal noise levels: this is the weighting alone.
  """
  snr = signal_to_noise(schedule, t)
  x0_weight = snr + 1.0 / EDM_SIGMA_DATA**2
  if prediction == 'eps':
    return x0_weight / jnp.maximum(snr, 1e-20)
  if prediction == 'x0':
    return x0_weight
  if prediction == 'v':
    return x0_weight / (snr + 1.0)
  raise ValueError(f'unknown prediction {prediction!r}; valid: {", ".join(PREDICTIONS)}')


def loss_fn(model_fn: Callable, schedule: Schedule, x0, t, noise, *, loss='mse', prediction='eps',
            huber_delta=1.0, loss_weighting='none', min_snr_gamma=5.0):
  """Returns the mean training loss of model_fn(x_t, t) against its prediction target.

  loss_weighting='min_snr' (or 'edm') averages each example's loss over its pixels, weights it by
  `min_snr_weights(..., min_snr_gamma)` (or `edm_weights`), then averages over the batch.
  """
  check_choice('loss_weighting', loss_weighting, LOSS_WEIGHTINGS)
  x_t = q_sample(schedule, x0, t, noise)
  output = model_fn(x_t, t)
  target = from_x0_eps(schedule, x0, noise, t, prediction)
  elementwise = elementwise_loss(output.astype(jnp.float32), target, loss, huber_delta)
  if loss_weighting == 'none':
    return jnp.mean(elementwise)  # one mean over every element: the loss bit for bit as before weighting existed
  per_example = jnp.mean(elementwise, axis=tuple(range(1, elementwise.ndim)))
  weights = (edm_weights(schedule, t, prediction) if loss_weighting == 'edm'
             else min_snr_weights(schedule, t, prediction, min_snr_gamma))
  return jnp.mean(weights * per_example)


def _predict_x0_eps(schedule, model_output, t, x_t, prediction, clip_denoised):
  """Returns (x0, eps) implied by the model output, with x0 clipped to [-1, 1] if asked."""
  x0 = to_x0(schedule, model_output, x_t, t, prediction)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return x0, eps_from_x0(schedule, x0, x_t, t)


def ddpm_step(schedule: Schedule, model_output, t, x_t, noise, *, variance='beta_tilde',
              clip_denoised=True, prediction='eps'):
  """Returns x_{t-1} from one ancestral step of p(x_{t-1} | x_t); no noise is added at t = 0."""
  x0, _ = _predict_x0_eps(schedule, model_output, t, x_t, prediction, clip_denoised)
  mean = (extract(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
  if variance == 'beta_tilde':
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)
  elif variance == 'beta':
    # Ho et al.'s sigma^2 = beta_t, with the t = 0 entry (unused: no noise there) set as in the paper.
    betas = jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    log_variance = jnp.log(extract(betas, t, x_t.ndim))
  else:
    raise ValueError(f'unknown variance {variance!r}; valid: {", ".join(VARIANCES)}')
  nonzero = broadcast_to_rank(jnp.asarray(t) > 0, x_t.ndim).astype(x_t.dtype)
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise


def _signal_noise_prev(schedule, t_prev, ndim):
  """Returns (sqrt(alpha_bar), sqrt(1 - alpha_bar)) at t_prev, and (1, 0) where t_prev < 0: the clean image."""
  t_prev = jnp.asarray(t_prev, jnp.int32)
  index = jnp.where(t_prev >= 0, t_prev, schedule.num_timesteps)
  return (extract(jnp.append(schedule.sqrt_alphas_cumprod, 1.0), index, ndim),
          extract(jnp.append(schedule.sqrt_one_minus_alphas_cumprod, 0.0), index, ndim))


def ddim_step(schedule: Schedule, model_output, t, t_prev, x_t, noise, *, eta=0.0,
              clip_denoised=True, prediction='eps'):
  """Returns x_{t_prev} from one DDIM step (Song et al. 2021); t_prev < 0 means the clean image.

  Past the last step alpha_bar_prev is 1 (diffusers' set_alpha_to_one=True): the last step
  returns the predicted x0 itself (plus sigma * noise when eta > 0).
  """
  x0, eps = _predict_x0_eps(schedule, model_output, t, x_t, prediction, clip_denoised)
  alpha_bar = extract(schedule.alphas_cumprod, t, x_t.ndim)
  t_prev = jnp.asarray(t_prev, jnp.int32)
  alphas_cumprod_ext = jnp.append(schedule.alphas_cumprod, 1.0)
  alpha_bar_prev = extract(alphas_cumprod_ext, jnp.where(t_prev >= 0, t_prev, schedule.num_timesteps),
                           x_t.ndim)
  return solvers.ddim_update(x0, eps, alpha_bar, alpha_bar_prev, noise, eta)


def dpmpp_2m_step(schedule: Schedule, model_output, t, t_prev, x_t, x0_last, h_last, *, clip_denoised=True,
                  prediction='eps'):
  """Returns (x_{t_prev}, x0, h): one DPM-Solver++(2M) step (Lu et al. 2022) and what the next step needs.

  x0 is this step's data prediction (clipped to [-1, 1] if asked) and h its step in
  log-SNR lambda = log(alpha / sigma). x0_last and h_last are the previous step's; h_last = inf
  (no previous step) makes this a first-order step, as is the last one (t_prev < 0, where
  sigma = 0: diffusers' final_sigmas_type='zero'), which returns x0.
  """
  x0 = to_x0(schedule, model_output, x_t, t, prediction)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  alpha, sigma = _signal_noise(schedule, t, x_t.ndim)
  alpha_prev, sigma_prev = _signal_noise_prev(schedule, t_prev, x_t.ndim)
  x_prev, h = solvers.dpmpp_2m_update(x_t, x0, x0_last, h_last, alpha, sigma, alpha_prev, sigma_prev,
                                      broadcast_to_rank(jnp.asarray(t_prev) >= 0, x_t.ndim))
  return x_prev, x0, h


def sample(denoise_fn: Callable, schedule: Schedule, rng, shape, *, sampler='ddpm', num_steps=None,
           eta=0.0, variance='beta_tilde', clip_denoised=True, prediction='eps', timestep_spacing='leading',
           x_T=None):
  """Returns samples x_0 of the given shape from the reverse process driven by denoise_fn(x_t, t).

  The loop over timesteps is one `lax.scan` inside `jax.jit`. Pass a
  `jax.tree_util.Partial(apply_fn, params)` as denoise_fn to keep params traced
  (no recompilation when they change); a plain function is compiled once per object.
  x_T, when given, replaces the starting noise drawn from rng (the steps' noise still comes from rng).
  timestep_spacing (`timesteps.SPACINGS`): leading, linspace or trailing place ddim's and heun's
  timesteps (dpmpp_2m keeps its own); logsnr and karras place ddim's, dpmpp_2m's and heun's noise
  levels (`timesteps.sampling_grid`, `solvers.sample_on_grid`). ddpm runs all T steps.
  """
  check_choice('sampler', sampler, SAMPLERS)
  check_choice('variance', variance, VARIANCES)
  check_choice('prediction', prediction, PREDICTIONS)
  if not isinstance(denoise_fn, jax.tree_util.Partial):
    denoise_fn = jax.tree_util.Partial(denoise_fn)
  init_key, loop_key = jax.random.split(rng)
  x_T = jax.random.normal(init_key, tuple(shape), jnp.float32) if x_T is None else jnp.asarray(x_T, jnp.float32)
  if timesteps.on_noise_levels(sampler, timestep_spacing):
    ts, sigmas = timesteps.sampling_grid(schedule, sampler, num_steps, timestep_spacing)
    return solvers.sample_on_grid(denoise_fn, ts, sigmas, x_T, loop_key, sampler=sampler, eta=eta,
                                  clip_denoised=clip_denoised, prediction=prediction)
  ts, t_prevs = sampling_timesteps(schedule.num_timesteps, sampler, num_steps, timestep_spacing)
  return _sample_scan(denoise_fn, schedule, x_T, loop_key, ts, t_prevs, eta, sampler=sampler, variance=variance,
                      clip_denoised=clip_denoised, prediction=prediction)


def _reverse_step(schedule, carry, output, t, t_prev, noise, *, sampler, eta, variance, clip_denoised, prediction):
  """Returns the scan's carry after one step: (x_{t_prev}, the multistep history: dpmpp_2m's (x0, h), else ())."""
  x_t, history = carry
  if sampler == 'ddpm':
    return ddpm_step(schedule, output, t, x_t, noise, variance=variance, clip_denoised=clip_denoised,
                     prediction=prediction), history
  if sampler == 'ddim':
    return ddim_step(schedule, output, t, t_prev, x_t, noise, eta=eta, clip_denoised=clip_denoised,
                     prediction=prediction), history
  x_prev, x0, h = dpmpp_2m_step(schedule, output, t, t_prev, x_t, *history, clip_denoised=clip_denoised,
                                prediction=prediction)
  return x_prev, (x0, h)


@functools.partial(jax.jit, static_argnames=('sampler', 'variance', 'clip_denoised', 'prediction'))
def _sample_scan(denoise_fn, schedule, x_T, loop_key, ts, t_prevs, eta, *, sampler, variance, clip_denoised,
                 prediction):
  """Returns x_0 after scanning the reverse step over (ts, t_prevs), starting from x_T."""
  shape = x_T.shape
  batch = (shape[0],)
  # dpmpp_2m's history starts empty: h_last = inf makes its first step first-order.
  history = (jnp.zeros_like(x_T), jnp.full(batch + (1,) * (len(shape) - 1), jnp.inf)) if sampler == 'dpmpp_2m' else ()

  def body(carry, inputs):
    index, t, t_prev = inputs
    noise = jax.random.normal(jax.random.fold_in(loop_key, index), shape, jnp.float32)
    t_batch = jnp.full(batch, t, jnp.int32)
    output = denoise_fn(carry[0], t_batch).astype(jnp.float32)
    return _reverse_step(schedule, carry, output, t_batch, jnp.full(batch, t_prev, jnp.int32), noise,
                         sampler=sampler, eta=eta, variance=variance, clip_denoised=clip_denoised,
                         prediction=prediction), None

  (x_0, _), _ = jax.lax.scan(body, (x_T, history), (jnp.arange(ts.shape[0]), ts, t_prevs))
  return x_0
