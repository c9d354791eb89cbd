"""The reverse process's grids: which timesteps or noise levels each sampler visits, noisiest first.

Two kinds of grid. The integer spacings (leading, linspace, trailing) pick timesteps of the
schedule, as diffusers' `timestep_spacing` does. The noise-level spacings (logsnr, karras) pick
noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) between sigma(T-1) and sigma(0) and end
at sigma = 0; the model sees each level's timestep, interpolated in log sigma and rounded
(diffusers' DPMSolverMultistepScheduler with use_lu_lambdas / use_karras_sigmas), while the
solver steps between the exact levels. Pure: imports only jax and numpy.
"""
import jax.numpy as jnp
import numpy as np

SAMPLERS = ('ddpm', 'ddim', 'dpmpp_2m', 'heun')
TIMESTEP_SPACINGS = ('leading', 'linspace', 'trailing')  # integer timesteps, as diffusers' timestep_spacing
SIGMA_SPACINGS = ('logsnr', 'karras')  # noise levels
SPACINGS = TIMESTEP_SPACINGS + SIGMA_SPACINGS
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


def check_choice(kind: str, value, valid) -> None:
  """Raises ValueError naming the value and the valid choices when value is not one of them."""
  if value not in valid:
    raise ValueError(f'unknown {kind} {value!r}; valid: {", ".join(valid)}')


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """Returns DDIM's num_steps timesteps, noisiest first, as diffusers' DDIMScheduler.set_timesteps spaces them.

  leading: multiples of T // n from 0 (the DDIM paper's; the first step may start well below T-1);
  linspace: n evenly spaced from 0 to T-1, rounded; trailing: T - 1 - multiples of T / n, rounded,
  so the first step starts from pure noise at T-1 (Lin et al. 2023). leading and linspace put
  the lone step of n = 1 at t = 0.
  """
  check_choice('timestep_spacing', spacing, TIMESTEP_SPACINGS)
  if spacing == 'leading':
    return np.arange(num_steps)[::-1] * (num_timesteps // num_steps)
  if spacing == 'linspace':
    return np.linspace(0, num_timesteps - 1, num_steps).round()[::-1]
  # np.arange as diffusers calls it (its rounding at ties is what makes the values equal); it
  # sometimes yields n + 1 values, the last one past the end, which diffusers then runs as t = -1.
  return np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps))[:num_steps] - 1


def dpm_solver_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """Returns DPM-Solver++'s num_steps timesteps, noisiest first: DPMSolverMultistepScheduler's default spacing.

  That is n + 1 points evenly spaced from 0 to T-1, rounded, less the last (t = 0): the
  final step goes from the smallest of them straight to the clean image.
  """
  return np.linspace(0, num_timesteps - 1, num_steps + 1).round()[::-1][:-1]


def on_noise_levels(sampler: str, spacing: str) -> bool:
  """Returns whether the sampler runs on a grid of noise levels (`sampling_grid`) rather than of timesteps."""
  return sampler == 'heun' or (sampler != 'ddpm' and spacing in SIGMA_SPACINGS)


def check_sampling(num_timesteps: int, sampler: str, num_steps=None, spacing='leading') -> int:
  """Returns the number of reverse steps; raises ValueError, naming the fix, for settings that can't run.

  ddpm runs all T steps and reads no spacing. dpmpp_2m's own grid (`dpm_solver_timesteps`, for
  the integer spacings) takes at most T - 1 steps; every other grid at most T.
  """
  check_choice('sampler', sampler, SAMPLERS)
  check_choice('timestep_spacing', spacing, SPACINGS)
  num_steps = num_timesteps if num_steps is None else int(num_steps)
  if sampler == 'ddpm' and num_steps != num_timesteps:
    raise ValueError(f'the ddpm sampler runs all {num_timesteps} steps, got num_steps={num_steps}; '
                     f'use sampler=ddim or dpmpp_2m for fewer steps, or heun')
  # dpmpp_2m's n + 1 points would repeat a timestep (a zero step in lambda) beyond T - 1 steps.
  most = num_timesteps - 1 if sampler == 'dpmpp_2m' and spacing in TIMESTEP_SPACINGS else num_timesteps
  if not 1 <= num_steps <= most:
    raise ValueError(f'num_steps={num_steps} is out of range for {sampler}; valid: 1..{most}')
  return num_steps


def timestep_grid(num_timesteps: int, sampler: str, num_steps=None, spacing='leading') -> np.ndarray:
  """Returns the timesteps of a timestep grid as numpy integers, noisiest first (see `sampling_timesteps`)."""
  num_steps = check_sampling(num_timesteps, sampler, num_steps, spacing)
  if sampler != 'ddpm' and spacing in SIGMA_SPACINGS:
    raise ValueError(f'timestep_spacing={spacing!r} places noise levels of the schedule: use sampling_grid')
  if sampler == 'dpmpp_2m':
    return dpm_solver_timesteps(num_timesteps, num_steps).astype(np.int64)
  # every spacing gives ddpm's T-1, ..., 0
  return ddim_timesteps(num_timesteps, num_steps, 'leading' if sampler == 'ddpm' else spacing).astype(np.int64)


def sampling_timesteps(num_timesteps: int, sampler: str, num_steps=None, spacing='leading'):
  """Returns (t, t_prev) int32 arrays of a timestep grid, from noisiest to cleanest; the last t_prev is -1.

  spacing (leading | linspace | trailing) places ddim's and heun's steps; ddpm runs all T steps and
  dpmpp_2m has its own spacing (`dpm_solver_timesteps`), so neither reads it. The noise-level
  spacings depend on the schedule: `sampling_grid` gives them.
  """
  ts = jnp.asarray(timestep_grid(num_timesteps, sampler, num_steps, spacing), jnp.int32)
  return ts, jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])


def schedule_sigmas(schedule) -> np.ndarray:
  """Returns sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T-1 in float64 (inf where alpha_bar = 0)."""
  with np.errstate(divide='ignore'):
    return (np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
            / np.asarray(schedule.sqrt_alphas_cumprod, np.float64))


def sigma_spacing(sigma_max: float, sigma_min: float, num_steps: int, spacing: str) -> np.ndarray:
  """Returns num_steps noise levels from sigma_max down to sigma_min: uniform in log sigma, or Karras' rho = 7."""
  check_choice('timestep_spacing', spacing, SIGMA_SPACINGS)
  ramp = np.linspace(0.0, 1.0, num_steps)
  if spacing == 'logsnr':  # log-SNR = -2 log sigma
    return np.exp(np.log(sigma_max) + ramp * (np.log(sigma_min) - np.log(sigma_max)))
  inv_max, inv_min = sigma_max ** (1 / KARRAS_RHO), sigma_min ** (1 / KARRAS_RHO)
  return (inv_max + ramp * (inv_min - inv_max)) ** KARRAS_RHO


def sigma_to_t(sigmas, table: np.ndarray) -> np.ndarray:
  """Returns the fractional timesteps of the noise levels: t interpolated linearly in log sigma over table."""
  return np.interp(np.log(sigmas), np.log(table), np.arange(len(table), dtype=np.float64))


def sampling_grid(schedule, sampler: str, num_steps=None, spacing='leading'):
  """Returns (t, sigmas): the timesteps the model sees, noisiest first, and the n + 1 noise levels (numpy arrays).

  sigmas[i] is the noise level of the state when the model is called at t[i]; sigmas[n] = 0, the
  clean image (diffusers' final_sigmas_type='zero'). On the timestep grids sigmas[i] = sigma(t[i]).
  """
  num_steps = check_sampling(schedule.num_timesteps, sampler, num_steps, spacing)
  table = schedule_sigmas(schedule)
  if spacing in SIGMA_SPACINGS and sampler != 'ddpm':
    _check_finite(table[-1:], sampler, spacing)
    sigmas = sigma_spacing(table[-1], table[0], num_steps, spacing)
    ts = np.round(sigma_to_t(sigmas, table))
  else:
    ts = timestep_grid(schedule.num_timesteps, sampler, num_steps, spacing)
    sigmas = table[ts]
    if sampler == 'heun':
      _check_finite(sigmas, sampler, spacing)
  return ts.astype(np.int32), np.append(sigmas, 0.0)


def _check_finite(sigmas, sampler, spacing) -> None:
  """Raises ValueError, naming the fix, where a noise-level grid would start from sigma = inf."""
  if not np.all(np.isfinite(sigmas)):
    raise ValueError(f'sampler={sampler!r} with timestep_spacing={spacing!r} needs a finite noise level at '
                     'every step, and this schedule has zero terminal SNR (alpha_bar = 0 at t = T-1); use '
                     "sampler='ddim' or 'dpmpp_2m' with timestep_spacing='trailing'")
