"""The diffusion math: forward noising, training losses, DDPM and DDIM reverse steps, the sampler.

Pure: imports only jax and numpy. Every function takes the Schedule explicitly and
draws no randomness of its own; noise and keys come in as arguments.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.core.schedules import Schedule

LOSSES = ('mse', 'mae', 'huber')
PREDICTIONS = ('eps', 'x0', 'v')
SAMPLERS = ('ddpm', 'ddim')
VARIANCES = ('beta_tilde', 'beta')


def check_choice(kind: str, value, valid) -> None:
  """Raises ValueError naming the value and the valid choices when value is not one of them."""
  if value not in valid:
    raise ValueError(f'unknown {kind} {value!r}; valid: {", ".join(valid)}')


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
  a, s = _signal_noise(schedule, t, x_t.ndim)
  if prediction == 'eps':
    return (x_t - s * model_output) / a
  if prediction == 'x0':
    return model_output
  if prediction == 'v':
    return a * x_t - s * model_output
  raise ValueError(f'unknown prediction {prediction!r}; valid: {", ".join(PREDICTIONS)}')


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


def loss_fn(model_fn: Callable, schedule: Schedule, x0, t, noise, *, loss='mse', prediction='eps',
            huber_delta=1.0):
  """Returns the mean training loss of model_fn(x_t, t) against its prediction target."""
  x_t = q_sample(schedule, x0, t, noise)
  output = model_fn(x_t, t)
  target = from_x0_eps(schedule, x0, noise, t, prediction)
  return jnp.mean(elementwise_loss(output.astype(jnp.float32), target, loss, huber_delta))


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


def ddim_step(schedule: Schedule, model_output, t, t_prev, x_t, noise, *, eta=0.0,
              clip_denoised=True, prediction='eps'):
  """Returns x_{t_prev} from one DDIM step (Song et al. 2021); t_prev < 0 means the clean image."""
  x0, eps = _predict_x0_eps(schedule, model_output, t, x_t, prediction, clip_denoised)
  alpha_bar = extract(schedule.alphas_cumprod, t, x_t.ndim)
  t_prev = jnp.asarray(t_prev, jnp.int32)
  # Past the last step the signal level is 1: the clean image.
  alphas_cumprod_ext = jnp.append(schedule.alphas_cumprod, 1.0)
  alpha_bar_prev = extract(alphas_cumprod_ext, jnp.where(t_prev >= 0, t_prev, schedule.num_timesteps),
                           x_t.ndim)
  sigma = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise


def sampling_timesteps(num_timesteps: int, sampler: str, num_steps=None):
  """Returns (t, t_prev) int32 arrays of the reverse process, from noisiest to cleanest."""
  check_choice('sampler', sampler, SAMPLERS)
  num_steps = num_timesteps if num_steps is None else int(num_steps)
  if sampler == 'ddpm' and num_steps != num_timesteps:
    raise ValueError(f'the ddpm sampler runs all {num_timesteps} steps, got num_steps={num_steps}; '
                     f'use sampler=ddim for fewer steps')
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f'num_steps={num_steps} is out of range; valid: 1..{num_timesteps}')
  # Evenly spaced from T-1 down to 0: the first step starts from pure noise, and the last
  # starts at t = 0, where the posterior mean of x0 barely shrinks its variance (ending at,
  # say, t = 19 leaves DDIM's last jump to blur the samples).
  ts = jnp.asarray(np.round(np.linspace(num_timesteps - 1, 0, num_steps)), jnp.int32)
  t_prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
  return ts, t_prev


def sample(denoise_fn: Callable, schedule: Schedule, rng, shape, *, sampler='ddpm', num_steps=None,
           eta=0.0, variance='beta_tilde', clip_denoised=True, prediction='eps'):
  """Returns samples x_0 of the given shape from the reverse process driven by denoise_fn(x_t, t).

  The loop over timesteps is one `lax.scan` inside `jax.jit`. Pass a
  `jax.tree_util.Partial(apply_fn, params)` as denoise_fn to keep params traced
  (no recompilation when they change); a plain function is compiled once per object.
  """
  check_choice('sampler', sampler, SAMPLERS)
  check_choice('variance', variance, VARIANCES)
  check_choice('prediction', prediction, PREDICTIONS)
  ts, t_prevs = sampling_timesteps(schedule.num_timesteps, sampler, num_steps)
  if not isinstance(denoise_fn, jax.tree_util.Partial):
    denoise_fn = jax.tree_util.Partial(denoise_fn)
  return _sample_scan(denoise_fn, schedule, rng, ts, t_prevs, eta, shape=tuple(shape), sampler=sampler,
                      variance=variance, clip_denoised=clip_denoised, prediction=prediction)


@functools.partial(jax.jit, static_argnames=('shape', 'sampler', 'variance', 'clip_denoised', 'prediction'))
def _sample_scan(denoise_fn, schedule, rng, ts, t_prevs, eta, *, shape, sampler, variance, clip_denoised,
                 prediction):
  """Returns x_0 after scanning the reverse step over (ts, t_prevs), starting from N(0, I)."""
  init_key, loop_key = jax.random.split(rng)
  x_T = jax.random.normal(init_key, shape, jnp.float32)

  def body(x_t, inputs):
    index, t, t_prev = inputs
    noise = jax.random.normal(jax.random.fold_in(loop_key, index), shape, jnp.float32)
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    output = denoise_fn(x_t, t_batch).astype(jnp.float32)
    if sampler == 'ddpm':
      x_prev = ddpm_step(schedule, output, t_batch, x_t, noise, variance=variance,
                         clip_denoised=clip_denoised, prediction=prediction)
    else:
      x_prev = ddim_step(schedule, output, t_batch, jnp.full((shape[0],), t_prev, jnp.int32), x_t, noise,
                         eta=eta, clip_denoised=clip_denoised, prediction=prediction)
    return x_prev, None

  x_0, _ = jax.lax.scan(body, x_T, (jnp.arange(ts.shape[0]), ts, t_prevs))
  return x_0
