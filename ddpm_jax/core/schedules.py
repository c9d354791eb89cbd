"""Noise schedules: beta_t and every coefficient the forward and reverse processes use.

Pure: imports only numpy, jax and flax. The coefficients are computed in float64
with numpy and stored as float32 arrays, so a schedule is exact to float32 whatever
the precision JAX runs in.
"""
import math
from typing import Callable

import flax.struct
import jax.numpy as jnp
import numpy as np

SCHEDULE_NAMES = ('linear', 'cosine', 'sigmoid', 'sigmoid_gamma')


@flax.struct.dataclass
class Schedule:
  """Per-timestep coefficients of a DDPM noise schedule; every field has length T."""
  betas: jnp.ndarray
  alphas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
  """Returns Ho et al.'s linear betas, rescaled by 1000/T so any T spans the same noise."""
  scale = 1000.0 / num_timesteps
  _check_range('beta_start', beta_start, 0.0, 1.0 / scale)
  _check_range('beta_end', beta_end, beta_start, 1.0 / scale)
  return np.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(t, s=0.008):
  """Returns Nichol & Dhariwal's signal level f(t)/f(0) at t in [0, 1] (unnormalised f)."""
  return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
  """Returns the cosine schedule's betas (Nichol & Dhariwal 2021), clipped at max_beta."""
  _check_range('s', s, 0.0, 1.0)
  _check_range('max_beta', max_beta, 0.0, 1.0, high_inclusive=True)
  return betas_from_alpha_bar(num_timesteps, lambda t: cosine_alpha_bar(t, s), max_beta)


def sigmoid_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
  """Returns sigmoid-shaped betas: flat at both ends, steep in the middle (the study's sigmoid)."""
  _check_range('beta_start', beta_start, 0.0, 1.0)
  _check_range('beta_end', beta_end, beta_start, 1.0)
  x = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
  return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def sigmoid_gamma(t, start=-3.0, end=3.0, tau=1.0, clip_min=1e-9):
  """Returns Chen 2023's signal level gamma(t) = alpha_bar(t) for t in [0, 1]."""
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  v_start, v_end = sig(start / tau), sig(end / tau)
  output = sig((t * (end - start) + start) / tau)
  return np.clip((v_end - output) / (v_end - v_start), clip_min, 1.0)


def sigmoid_gamma_betas(num_timesteps, start=-3.0, end=3.0, tau=1.0, max_beta=0.999):
  """Returns betas whose alpha_bar follows Chen 2023's sigmoid gamma(t), clipped at max_beta."""
  if not start < end:
    raise ValueError(f'sigmoid_gamma needs start < end, got start={start}, end={end}')
  _check_range('tau', tau, 0.0, math.inf)
  _check_range('max_beta', max_beta, 0.0, 1.0, high_inclusive=True)
  return betas_from_alpha_bar(num_timesteps, lambda t: sigmoid_gamma(t, start, end, tau), max_beta)


def betas_from_alpha_bar(num_timesteps, alpha_bar: Callable, max_beta):
  """Returns beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T), clipped at max_beta."""
  t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  levels = alpha_bar(t)
  return np.minimum(1.0 - levels[1:] / levels[:-1], max_beta)


_BETA_FNS = {
    'linear': linear_betas,
    'cosine': cosine_betas,
    'sigmoid': sigmoid_betas,
    'sigmoid_gamma': sigmoid_gamma_betas,
}
_PARAMS = {
    'linear': ('beta_start', 'beta_end'),
    'cosine': ('s', 'max_beta'),
    'sigmoid': ('beta_start', 'beta_end'),
    'sigmoid_gamma': ('start', 'end', 'tau', 'max_beta'),
}


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Returns betas rescaled so alpha_bar_T = 0 with alpha_bar_1 kept (Lin et al. 2023, Algorithm 1).

  sqrt(alpha_bar) is shifted down by its last value and stretched back to its first,
  so the last step destroys the image completely (beta_T = 1) and training sees what
  sampling starts from: pure noise. The first beta is unchanged.
  """
  signal = np.sqrt(np.cumprod(1.0 - np.asarray(betas, np.float64)))
  first, last = signal[0], signal[-1]
  alphas_cumprod = ((signal - last) * first / (first - last)) ** 2
  return 1.0 - np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])


def shift_logsnr(betas: np.ndarray, shift: float) -> np.ndarray:
  """Returns betas whose log-SNR is the given betas' plus `shift` at every timestep (float64).

  Hoogeboom et al. (2023, simple diffusion) shift the cosine schedule by 2 ln(64 / d) for
  d-pixel images: the same log-SNR destroys a small image's content sooner (fewer pixels
  average the noise away), so a 16 px image needs +2.8 (less noise) to be trained over the
  levels a 64 px one is. alpha_bar = 0 (zero terminal SNR) stays 0.
  """
  alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
  with np.errstate(divide='ignore'):
    logsnr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)
  shifted = 1.0 / (1.0 + np.exp(-(logsnr + shift)))
  return 1.0 - np.append(shifted[0], shifted[1:] / shifted[:-1])


def make_schedule(name: str, num_timesteps: int = 1000, zero_terminal_snr: bool = False, logsnr_shift: float = 0.0,
                  **params) -> Schedule:
  """Returns the named schedule of T = num_timesteps (ᾱ_T = 0 if zero_terminal_snr); ValueError on a bad name/parameter.

  logsnr_shift moves every timestep's log-SNR by that much (`shift_logsnr`; > 0 = less noise), before
  any zero-terminal-SNR rescaling.

  With zero_terminal_snr every field stays finite (beta_T = 1, alpha_bar_T = 0,
  posterior_mean_coef2[T-1] = 0), but anything dividing by sqrt_alphas_cumprod at
  t = T-1 (x0 from an eps prediction) is infinite there: use the v or x0 prediction.
  """
  if name not in _BETA_FNS:
    raise ValueError(f'unknown schedule {name!r}; valid schedules: {", ".join(SCHEDULE_NAMES)}')
  if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 2:
    raise ValueError(f'num_timesteps must be an integer >= 2, got {num_timesteps!r}')
  unknown = sorted(set(params) - set(_PARAMS[name]))
  if unknown:
    raise ValueError(f'unknown parameter(s) {unknown} for schedule {name!r}; '
                     f'valid: {list(_PARAMS[name])}')
  betas = _BETA_FNS[name](int(num_timesteps), **params)
  if logsnr_shift:  # no-op arithmetic avoided: unshifted schedules keep their exact betas
    betas = shift_logsnr(betas, logsnr_shift)
  return schedule_from_betas(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """Returns the Schedule of the given float64 betas, every coefficient computed in float64."""
  betas = np.asarray(betas, dtype=np.float64)
  # The last beta may be 1: a zero-terminal-SNR schedule ends in pure noise.
  if not (np.all((betas[:-1] > 0) & (betas[:-1] < 1)) and 0 < betas[-1] <= 1):
    raise ValueError('every beta must lie in (0, 1), the last in (0, 1]')
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # The variance is 0 at t=0; clip the log there to the t=1 value, as Ho et al. do.
  posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
  arrays = dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )
  return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()})


def _check_range(name, value, low, high, high_inclusive=False):
  ok = low < value and (value <= high if high_inclusive else value < high)
  if not ok:
    bracket = ']' if high_inclusive else ')'
    raise ValueError(f'schedule parameter {name}={value!r} is out of range; valid: ({low}, {high}{bracket}')
