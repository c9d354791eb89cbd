"""The reverse process's updates at given noise levels, and the scan over a grid of levels (ddim, dpmpp_2m, heun).

A state x = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1) sits at Karras et al.'s (2022) noise level
sigma / alpha, and x / alpha follows the probability-flow ODE d(x / alpha) = eps d(sigma / alpha).
DDIM with eta = 0 is its Euler method, DPM-Solver++(2M) a second-order multistep method in
log-SNR, and Heun (Karras et al.'s Algorithm 1, deterministic) the trapezoidal rule with an Euler
predictor. `timesteps.sampling_grid` gives the levels; diffusion.py's steps on timesteps share
the updates here. Pure: imports only jax and numpy.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ('eps', 'x0', 'v')


def x0_from(model_output, x_t, alpha, sigma, prediction):
  """Returns the x0 that a model output of the given prediction type implies for x_t = alpha x0 + sigma eps."""
  if prediction == 'eps':
    return (x_t - sigma * model_output) / alpha
  if prediction == 'x0':
    return model_output
  if prediction == 'v':
    return alpha * x_t - sigma * model_output
  raise ValueError(f'unknown prediction {prediction!r}; valid: {", ".join(PREDICTIONS)}')


def ddim_update(x0, eps, alpha_bar, alpha_bar_prev, noise, eta):
  """Returns x at alpha_bar_prev from one DDIM step (Song et al. 2021) of the x0 and eps predicted at alpha_bar."""
  sigma = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise


def dpmpp_2m_update(x_t, x0, x0_last, h_last, alpha, sigma, alpha_next, sigma_next, second_order):
  """Returns (x at (alpha_next, sigma_next), h): one DPM-Solver++(2M) step (Lu et al. 2022) and its step in log-SNR.

  x0 is this step's data prediction, x0_last and h_last the previous step's; where second_order
  is false (the first step, the last one to sigma_next = 0) the step is first-order.
  """
  # lambda = log(alpha / sigma) is -inf where alpha = 0 (zero terminal SNR) and +inf at the clean
  # image, so h is infinite at such a step and h_last after it: the where keeps both out of the update.
  h = (jnp.log(alpha_next) - jnp.log(sigma_next)) - (jnp.log(alpha) - jnp.log(sigma))
  ratio = jnp.where(second_order & jnp.isfinite(h_last), h / h_last, 0.0)  # diffusers' 1 / r0
  data = x0 + 0.5 * ratio * (x0 - x0_last)  # D0 + D1 / 2 of the midpoint solver
  # diffusers' (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D, written without exp(-h), which is
  # alpha sigma_next / (sigma alpha_next) and so finite at alpha = 0 and at sigma_next = 0.
  return sigma_next / sigma * (x_t - alpha * data) + alpha_next * data, h


def signal_and_noise(sigmas: np.ndarray):
  """Returns (alpha, sigma) of x = alpha x0 + sigma eps at Karras noise levels sigma / alpha (float64)."""
  alpha = 1.0 / np.sqrt(1.0 + np.square(sigmas))
  return alpha, sigmas * alpha


def scan_inputs(ts, sigmas: np.ndarray, sampler: str) -> dict:
  """Returns the scan's inputs, one row per model call: its t and levels, and for heun the step it serves.

  ddim and dpmpp_2m call the model once a step, at grid point i, to step to i + 1. heun calls it
  at i (the Euler predictor) and, unless sigmas[i + 1] = 0, at i + 1 (the trapezoidal corrector).
  """
  ts = np.asarray(ts)
  if sampler == 'heun':
    calls = [(step, corrector) for step in range(len(ts)) for corrector in (False, True)
             if not corrector or sigmas[step + 1] > 0]
    steps, corrector = (np.array(column) for column in zip(*calls))
  else:
    steps, corrector = np.arange(len(ts)), np.zeros(len(ts), bool)
  at = steps + corrector  # the grid point each call evaluates
  alpha, noise = signal_and_noise(sigmas)
  rows = {'t': ts[at], 'alpha': alpha[at], 'sigma': noise[at], 'alpha_next': alpha[steps + 1],
          'sigma_next': noise[steps + 1], 'level': sigmas[at], 'level_step': sigmas[steps + 1] - sigmas[steps]}
  rows = {key: jnp.asarray(value, jnp.int32 if key == 't' else jnp.float32) for key, value in rows.items()}
  return dict(rows, corrector=jnp.asarray(corrector), index=jnp.arange(len(steps)))


def sample_on_grid(denoise_fn: Callable, ts, sigmas: np.ndarray, x_T, loop_key, *, sampler: str, eta=0.0,
                   clip_denoised=True, prediction='eps'):
  """Returns x_0 from x_T (the state at sigmas[0]) after the sampler's steps down the grid (ts, sigmas).

  ts are the int32 timesteps the model sees, sigmas the n + 1 noise levels ending at 0
  (`timesteps.sampling_grid`). One `lax.scan`, one model call per iteration: heun makes
  2n - 1. Only ddim with eta > 0 draws noise, from loop_key folded with the iteration.
  """
  inputs = scan_inputs(ts, sigmas, sampler)
  return _grid_scan(denoise_fn, inputs, x_T, loop_key, eta, sampler=sampler, clip_denoised=clip_denoised,
                    prediction=prediction)


def _denoised(denoise_fn, x_t, row, clip_denoised, prediction):
  """Returns the model's x0 at the row's timestep and levels, clipped to [-1, 1] if asked."""
  output = denoise_fn(x_t, jnp.full(x_t.shape[:1], row['t'], jnp.int32)).astype(jnp.float32)
  x0 = x0_from(output, x_t, row['alpha'], row['sigma'], prediction)
  return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0


def _heun_stage(denoise_fn, carry, row, clip_denoised, prediction):
  """Returns the carry (x / alpha to evaluate next, the step's start and slope) after one predictor or corrector."""
  x_scaled, start, start_slope = carry
  x0 = _denoised(denoise_fn, row['alpha'] * x_scaled, row, clip_denoised, prediction)
  slope = (x_scaled - x0) / row['level']  # d(x / alpha) / d(level): the eps implied by x0
  euler = x_scaled + row['level_step'] * slope
  trapezoid = start + row['level_step'] * 0.5 * (start_slope + slope)
  corrector = row['corrector']
  return (jnp.where(corrector, trapezoid, euler), jnp.where(corrector, start, x_scaled),
          jnp.where(corrector, start_slope, slope))


def initial_carry(x_T, inputs: dict, sampler: str):
  """Returns the scan's carry at x_T: (x, (x0, h) of the last step) or, for heun, (x / alpha, start, slope)."""
  if sampler == 'heun':
    x_scaled = x_T / inputs['alpha'][0]
    return x_scaled, x_scaled, jnp.zeros_like(x_T)
  return x_T, (jnp.zeros_like(x_T), jnp.float32(jnp.inf))  # h_last = inf: a first-order first step


def grid_step(denoise_fn, carry, row: dict, loop_key, eta, *, sampler, clip_denoised, prediction):
  """Returns the carry after the model call of one row of `scan_inputs`; its first element is x at the step's end.

  For heun that element is x / alpha, the state Karras et al.'s ODE runs on (diffusers' Heun and
  Euler schedulers' `sample`); x at sigma = 0 either way.
  """
  if sampler == 'heun':
    return _heun_stage(denoise_fn, carry, row, clip_denoised, prediction)
  x_t, (x0_last, h_last) = carry
  x0 = _denoised(denoise_fn, x_t, row, clip_denoised, prediction)
  if sampler == 'ddim':
    noise = jax.random.normal(jax.random.fold_in(loop_key, row['index']), x_t.shape, jnp.float32)
    eps = (x_t - row['alpha'] * x0) / row['sigma']
    return ddim_update(x0, eps, row['alpha'] ** 2, row['alpha_next'] ** 2, noise, eta), (x0, h_last)
  x_next, h = dpmpp_2m_update(x_t, x0, x0_last, h_last, row['alpha'], row['sigma'], row['alpha_next'],
                              row['sigma_next'], row['sigma_next'] > 0)
  return x_next, (x0, h)


@functools.partial(jax.jit, static_argnames=('sampler', 'clip_denoised', 'prediction'))
def _grid_scan(denoise_fn, inputs, x_T, loop_key, eta, *, sampler, clip_denoised, prediction):
  """Returns x_0 after scanning `grid_step` over the rows of inputs, starting from x_T."""
  def body(carry, row):
    return grid_step(denoise_fn, carry, row, loop_key, eta, sampler=sampler, clip_denoised=clip_denoised,
                     prediction=prediction), None
  carry, _ = jax.lax.scan(body, initial_carry(x_T, inputs, sampler), inputs)
  return carry[0]
